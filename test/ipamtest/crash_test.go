package ipamtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// Allocating processes are killed with SIGKILL at random instants, several at
// a time. Afterwards every reservation must be reachable from its owner's
// record (no leak), no address may be held twice, and DEL of every container
// that was ever started must empty the store.
func TestKillDuringAllocation(t *testing.T) {
	node := harness.NewNode(t)
	dataDir := node.Dir + "/ipam"
	conf := ipamConf{Ranges: []rangeConf{{Subnet: "100.64.20.0/22"}, {Subnet: "fd00:64:20::/64"}}, DataDir: dataDir}
	stdin := harness.IPAMStdin("podnet", "1.1.0", conf.JSON(t))
	ctx := ctxFor(t, 5*time.Minute)
	pod := node.NewPod(t, "default", "netns-holder") // IPAM never enters the netns

	const rounds, perRound = 100, 4
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []string
	completed := map[string][]netip.Prefix{}
	var mu sync.Mutex
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		for j := 0; j < perRound; j++ {
			id := fmt.Sprintf("c%03d-%d", round, j)
			ids = append(ids, id)
			delay := time.Duration(rng.IntN(20000)) * time.Microsecond
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, ok := addAndMaybeKill(t, ctx, node, pod, id, stdin, delay)
				if ok {
					mu.Lock()
					completed[id] = parseIPs(t, out)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	t.Logf("%d ADDs started, %d completed before the kill", len(ids), len(completed))

	assertConsistent(t, filepath.Join(dataDir, "podnet"), completed)

	// A retried ADD of a completed container returns what it had.
	for id, want := range completed {
		got := parseIPs(t, invokeAs(t, ctx, node, pod, id, "ADD", stdin))
		if !equalPrefixes(got, want) {
			t.Errorf("retried ADD of %s: %v, first ADD gave %v", id, got, want)
		}
		break
	}
	for _, id := range ids {
		invokeAs(t, ctx, node, pod, id, "DEL", stdin)
	}
	if left := reservations(t, dataDir, "podnet"); len(left) != 0 {
		t.Errorf("after DEL of every container, reservations remain: %v", left)
	}
	records, _ := os.ReadDir(filepath.Join(dataDir, "podnet", "attachments"))
	if len(records) != 0 {
		t.Errorf("after DEL of every container, %d records remain", len(records))
	}
}

// addAndMaybeKill starts an ADD as container id and kills it after delay,
// unless it finished first; ok tells whether it completed.
func addAndMaybeKill(t *testing.T, ctx context.Context, node *harness.Node, pod *harness.Pod, id string, stdin []byte, delay time.Duration) ([]byte, bool) {
	cmd, err := commandAs(ctx, node, pod, id, "ADD", stdin)
	if err != nil {
		t.Error(err)
		return nil, false
	}
	var stdout safeBuffer
	cmd.Stdout = &stdout
	if err := node.Start(cmd); err != nil {
		t.Error(err)
		return nil, false
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ADD %s failed: %v\n%s", id, err, stdout.Bytes())
			return nil, false
		}
		return stdout.Bytes(), true
	case <-time.After(delay):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		if err := <-exited; err == nil {
			return stdout.Bytes(), true // finished before the signal landed
		}
		return nil, false
	}
}

type safeBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *safeBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}

func invokeAs(t *testing.T, ctx context.Context, node *harness.Node, pod *harness.Pod, id, cmd string, stdin []byte) []byte {
	t.Helper()
	c, err := commandAs(ctx, node, pod, id, cmd, stdin)
	if err != nil {
		t.Fatal(err)
	}
	var stdout safeBuffer
	c.Stdout = &stdout
	if err := node.Start(c); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("%s %s: %v\n%s", cmd, id, err, stdout.Bytes())
	}
	return stdout.Bytes()
}

// commandAs prepares podwall-ipam for command as container id, on pod's netns.
func commandAs(ctx context.Context, node *harness.Node, pod *harness.Pod, id, command string, stdin []byte) (*exec.Cmd, error) {
	cmd, err := node.PluginCommand(ctx, "podwall-ipam", command, pod, stdin)
	if err != nil {
		return nil, err
	}
	for i, kv := range cmd.Env {
		if strings.HasPrefix(kv, "CNI_CONTAINERID=") {
			cmd.Env[i] = "CNI_CONTAINERID=" + id
		}
	}
	return cmd, nil
}

func parseIPs(t *testing.T, out []byte) []netip.Prefix {
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Errorf("decoding result %q: %v", out, err)
		return nil
	}
	var ips []netip.Prefix
	for _, ip := range res.IPs {
		ips = append(ips, netip.MustParsePrefix(ip.Address))
	}
	return ips
}

// assertConsistent reads the store as files: every reservation names an
// owner whose record lists it, and every completed ADD still holds exactly
// what it was given.
func assertConsistent(t *testing.T, netDir string, completed map[string][]netip.Prefix) {
	t.Helper()
	type owner struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	}
	type record struct {
		owner
		Allocations []struct {
			Address netip.Prefix `json:"address"`
		} `json:"allocations"`
	}
	listed := map[owner]map[netip.Addr]bool{}
	recs, err := os.ReadDir(filepath.Join(netDir, "attachments"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range recs {
		data, err := readEntry(filepath.Join(netDir, "attachments", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var r record
		if len(data) == 0 {
			// Killed between creating the record and its single write:
			// nothing was reserved yet (that follows the write).
			continue
		}
		if err := json.Unmarshal(data, &r); err != nil {
			t.Errorf("torn record %s: %q", e.Name(), data)
			continue
		}
		listed[r.owner] = map[netip.Addr]bool{}
		for _, a := range r.Allocations {
			listed[r.owner][a.Address.Addr()] = true
		}
	}
	held := map[string][]netip.Addr{}
	ips, err := os.ReadDir(filepath.Join(netDir, "ips"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ips {
		data, err := readEntry(filepath.Join(netDir, "ips", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var o owner
		if err := json.Unmarshal(data, &o); err != nil {
			t.Errorf("torn reservation %s: %q", e.Name(), data)
			continue
		}
		ip := netip.MustParseAddr(e.Name())
		if !listed[o][ip] {
			t.Errorf("leak: %s is reserved for %s but its record does not list it", ip, o.ContainerID)
		}
		held[o.ContainerID] = append(held[o.ContainerID], ip)
	}
	for id, want := range completed {
		if len(held[id]) != len(want) {
			t.Errorf("%s completed with %v but holds %v", id, want, held[id])
		}
	}
}

// readEntry reads a store entry: a symbolic link's target (what podwall-ipam
// writes) or a regular file.
func readEntry(path string) ([]byte, error) {
	if target, err := os.Readlink(path); err == nil {
		return []byte(target), nil
	}
	return os.ReadFile(path)
}
