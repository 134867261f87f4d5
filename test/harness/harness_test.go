package harness_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestMainPluginsWithHostLocal(t *testing.T) {
	cases := []struct {
		name     string
		conflist func(dataDir string) []byte
	}{
		{"bridge", func(dataDir string) []byte {
			return harness.BridgeConflist("podnet", "cni0", harness.HostLocalIPAM(dataDir, "10.244.1.0/24", "fd00:244:1::/64"))
		}},
		{"ptp", func(dataDir string) []byte {
			return harness.PTPConflist("podnet", harness.HostLocalIPAM(dataDir, "10.244.2.0/24"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			harness.CheckHostUnchanged(t)
			node := harness.NewNode(t)
			dataDir := filepath.Join(node.Dir, "ipam")
			network := node.Network(t, tc.conflist(dataDir))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			pods := []*harness.Pod{
				node.NewPod(t, "frontend", "web"),
				node.NewPod(t, "backend", "api"),
				node.NewPod(t, "db", "pg"),
			}
			addrs := map[*harness.Pod][]netip.Addr{}
			for _, pod := range pods {
				result, err := network.Add(ctx, pod)
				if err != nil {
					t.Fatalf("ADD %s: %v", pod.Name, err)
				}
				ips, err := harness.ResultIPs(result)
				if err != nil {
					t.Fatal(err)
				}
				for _, ip := range ips {
					addrs[pod] = append(addrs[pod], ip.Addr())
					if out := pod.MustRun(t, "ip", "-o", "addr", "show", "dev", pod.IfName); !strings.Contains(out, ip.String()) {
						t.Errorf("pod %s: %s not configured in its netns:\n%s", pod.Name, ip, out)
					}
				}
				pod.ServeTCP(t, 8080)
			}

			for _, from := range pods {
				for _, to := range pods {
					if from == to {
						continue
					}
					for _, addr := range addrs[to] {
						got, err := from.ConnectTCP(ctx, netip.AddrPortFrom(addr, 8080).String())
						if err != nil {
							t.Errorf("%s -> %s (%s): %v", from.Name, to.Name, addr, err)
						} else if want := to.Namespace + "/" + to.Name; got != want {
							t.Errorf("%s -> %s: answered by %q, want %q", from.Name, addr, got, want)
						}
					}
				}
			}

			for _, pod := range pods {
				if err := network.Check(ctx, pod); err != nil {
					t.Errorf("CHECK %s: %v", pod.Name, err)
				}
			}
			if err := network.Status(ctx); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			for _, pod := range pods {
				if err := network.Del(ctx, pod); err != nil {
					t.Errorf("DEL %s: %v", pod.Name, err)
				}
				if err := network.Del(ctx, pod); err != nil {
					t.Errorf("second DEL %s: %v", pod.Name, err)
				}
			}
			assertNoVeths(t, node)
			assertNoAllocations(t, dataDir)
		})
	}
}

func TestConcurrentAdds(t *testing.T) {
	pods := 50
	if n, err := strconv.Atoi(os.Getenv("HARNESS_CONCURRENT_PODS")); err == nil && n > 0 {
		pods = n // e.g. 500 to try the harness at the IPAM test's scale
	}
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	dataDir := filepath.Join(node.Dir, "ipam")
	network := node.Network(t, harness.BridgeConflist("podnet", "cni0", harness.HostLocalIPAM(dataDir, "10.244.0.0/16")))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := time.Now()
	all := make([]*harness.Pod, pods)
	for i := range all {
		all[i] = node.NewPod(t, "load", fmt.Sprintf("pod-%d", i))
	}
	t.Logf("creating %d pod namespaces took %v", pods, time.Since(start))
	results := make([]netip.Addr, pods)
	errs := make([]error, pods)
	start = time.Now()
	parallel(pods, func(i int) {
		result, err := network.Add(ctx, all[i])
		if err != nil {
			errs[i] = err
			return
		}
		ips, err := harness.ResultIPs(result)
		if err != nil || len(ips) != 1 {
			errs[i] = fmt.Errorf("result IPs %v: %v", ips, err)
			return
		}
		results[i] = ips[0].Addr()
	})
	t.Logf("%d concurrent ADDs took %v", pods, time.Since(start))
	seen := map[netip.Addr]string{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD pod-%d: %v", i, err)
		}
		if other, dup := seen[results[i]]; dup {
			t.Errorf("pod-%d got %s, already given to %s", i, results[i], other)
		}
		seen[results[i]] = all[i].Name
	}

	parallel(pods, func(i int) { errs[i] = network.Check(ctx, all[i]) })
	if err := errors.Join(errs...); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	start = time.Now()
	parallel(pods, func(i int) { errs[i] = network.Del(ctx, all[i]) })
	t.Logf("%d concurrent DELs took %v", pods, time.Since(start))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertNoVeths(t, node)
	assertNoAllocations(t, dataDir)
}

// GC DELs the cached attachments of pods not in the valid list.
func TestGC(t *testing.T) {
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	network := node.Network(t, harness.BridgeConflist("podnet", "cni0", harness.HostLocalIPAM(filepath.Join(node.Dir, "ipam"), "10.244.1.0/24")))
	ctx := context.Background()
	keep, drop := node.NewPod(t, "default", "keep"), node.NewPod(t, "default", "drop")
	for _, pod := range []*harness.Pod{keep, drop} {
		if _, err := network.Add(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	if err := network.GC(ctx, keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := network.Check(ctx, keep); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
	if links, err := drop.Links(); err != nil || len(links) != 1 {
		t.Errorf("dropped pod still has links %v (%v)", links, err)
	}
}

// The IPAM plugin invoked directly, the way a main plugin delegates.
func TestInvokePlugin(t *testing.T) {
	node := harness.NewNode(t)
	pod := node.NewPod(t, "default", "direct")
	ctx := context.Background()
	stdin := harness.IPAMStdin("podnet", harness.DefaultCNIVersion, harness.HostLocalIPAM(filepath.Join(node.Dir, "ipam"), "10.244.9.0/30"))

	out, err := node.InvokePlugin(ctx, "host-local", "ADD", pod, stdin)
	if err != nil || !strings.Contains(string(out), "10.244.9.") {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	other := node.NewPod(t, "default", "other")
	_, err = node.InvokePlugin(ctx, "host-local", "ADD", other, stdin)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || !strings.Contains(cniErr.Msg, "no IP addresses available") {
		t.Fatalf("ADD on an exhausted /30: want a CNI error, got %v", err)
	}
	gc, err := harness.InjectJSON(stdin, "cni.dev/valid-attachments", harness.ValidAttachments())
	if err != nil {
		t.Fatal(err)
	}
	if out, err := node.InvokePlugin(ctx, "host-local", "GC", nil, gc); err != nil {
		t.Fatalf("GC: %v\n%s", err, out)
	}
	if _, err := node.InvokePlugin(ctx, "host-local", "ADD", other, stdin); err != nil {
		t.Fatalf("ADD after GC freed the range: %v", err)
	}
}

// Commands and sysctls run in the node namespace, never in the host's.
func TestNodeIsolation(t *testing.T) {
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	var nodeIno uint64
	if info, err := os.Stat(node.Path()); err == nil {
		nodeIno = info.Sys().(*syscall.Stat_t).Ino
	} else {
		t.Fatal(err)
	}
	self := strings.TrimSpace(node.MustRun(t, "readlink", "/proc/self/ns/net"))
	if want := fmt.Sprintf("net:[%d]", nodeIno); self != want {
		t.Fatalf("command ran in %s, want the node netns %s", self, want)
	}
	if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(node.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("node ip_forward = %s after setting it", got)
	}
	if err := node.AddUplink("uplink0", "192.168.50.2/24", "fd00:50::2/64"); err != nil {
		t.Fatal(err)
	}
	if err := node.AddRoute("172.20.0.0/14", "via", "192.168.50.1"); err != nil {
		t.Fatal(err)
	}
	node.MustRun(t, "iptables", "-N", "PODWALL-HARNESS-TEST")
	node.MustRun(t, "ipset", "create", "podwall-harness-test", "hash:ip")
	routes := node.MustRun(t, "ip", "route")
	for _, want := range []string{"172.20.0.0/14 via 192.168.50.1", "192.168.50.0/24 dev uplink0"} {
		if !strings.Contains(routes, want) {
			t.Errorf("node routes lack %q:\n%s", want, routes)
		}
	}
	// CheckHostUnchanged verifies at the end that none of it reached the host.
}

// A test that fails or panics mid-way still tears everything down, and the
// namespaces of a test binary killed outright are swept by the next NewNode.
func TestTeardownAfterAbnormalEnd(t *testing.T) {
	if os.Getenv("HARNESS_CHILD") != "" {
		t.Skip("helper mode")
	}
	harness.RequireRoot(t)
	for _, mode := range []string{"fail", "panic"} {
		t.Run(mode, func(t *testing.T) {
			harness.CheckHostUnchanged(t)
			out, pid, err := runChild(t, mode, nil)
			if left := netnsWithPrefix(t, fmt.Sprintf("pwtest-%d-", pid)); len(left) != 0 {
				t.Errorf("child left namespaces behind: %v\n%s", left, out)
			}
			if err == nil {
				t.Fatalf("child test should have failed:\n%s", out)
			}
			if !strings.Contains(out, "child: attached") {
				t.Fatalf("child did not get as far as attaching pods:\n%s", out)
			}
		})
	}
	t.Run("kill", func(t *testing.T) {
		harness.CheckHostUnchanged(t)
		_, childPid, _ := runChild(t, "block", func(cmd *exec.Cmd) { _ = cmd.Process.Kill() })
		prefix := fmt.Sprintf("pwtest-%d-", childPid)
		if left := netnsWithPrefix(t, prefix); len(left) == 0 {
			t.Fatalf("killed child left no namespace to sweep; test is not exercising the sweep")
		}
		harness.NewNode(t) // sweeps
		if left := netnsWithPrefix(t, prefix); len(left) != 0 {
			t.Errorf("namespaces of the killed child not swept: %v", left)
		}
	})
}

// TestChild is the body TestTeardownAfterAbnormalEnd runs in a child process.
func TestChild(t *testing.T) {
	mode := os.Getenv("HARNESS_CHILD")
	if mode == "" {
		t.Skip("only run as a child of TestTeardownAfterAbnormalEnd")
	}
	node := harness.NewNode(t)
	network := node.Network(t, harness.BridgeConflist("podnet", "cni0", harness.HostLocalIPAM(filepath.Join(node.Dir, "ipam"), "10.244.1.0/24")))
	for i := range 3 {
		if _, err := network.Add(context.Background(), node.NewPod(t, "default", fmt.Sprintf("p%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("child: attached")
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "panic":
		panic("panicking on purpose")
	case "block":
		time.Sleep(time.Minute)
	}
}

// runChild runs TestChild in a child test process and returns its output
// and pid; onAttached, if given, is called once the child has attached its
// pods.
func runChild(t *testing.T, mode string, onAttached func(*exec.Cmd)) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChild$", "-test.v")
	cmd.Env = append(os.Environ(), "HARNESS_CHILD="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	scanner := bufio.NewScanner(stdout)
	for scanner.Scan() {
		out.WriteString(scanner.Text() + "\n")
		if onAttached != nil && strings.Contains(scanner.Text(), "child: attached") {
			onAttached(cmd)
		}
	}
	return out.String(), cmd.Process.Pid, cmd.Wait()
}

func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func assertNoVeths(t *testing.T, node *harness.Node) {
	t.Helper()
	err := node.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, link := range links {
			if link.Type() == "veth" {
				t.Errorf("veth %s left in the node after DEL", link.Attrs().Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// assertNoAllocations checks host-local's store holds no address any more.
func assertNoAllocations(t *testing.T, dataDir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dataDir, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		base := filepath.Base(f)
		if base != "lock" && !strings.HasPrefix(base, "last_reserved_ip") {
			t.Errorf("allocation %s left after DEL", base)
		}
	}
}

func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	wg.Wait()
}
