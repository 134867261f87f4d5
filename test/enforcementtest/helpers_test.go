// Package enforcementtest drives the podwall chained plugin through real
// conflists (bridge or ptp, podwall-ipam, podwall) on a real kernel and
// checks verdicts with real packets.
package enforcementtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"strconv"

	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const (
	netName      = "podnet"
	agentTimeout = 300 * time.Millisecond
	// denyWait is how long a denied connection attempt is given.
	denyWait = 500 * time.Millisecond
)

// env is a node with one network whose chain ends in podwall.
type env struct {
	t       *testing.T
	node    *harness.Node
	nw      *harness.Network
	layout  string
	podwall []byte
}

func podwallConf(node *harness.Node) []byte {
	conf, _ := json.Marshal(map[string]string{
		"type": "podwall", "agentSocket": node.Dir + "/agent.sock", "agentTimeout": agentTimeout.String(),
	})
	return conf
}

func ipamConf(node *harness.Node, subnets ...string) []byte {
	var ranges []map[string]string
	for _, s := range subnets {
		ranges = append(ranges, map[string]string{"subnet": s})
	}
	conf, _ := json.Marshal(map[string]any{"type": "podwall-ipam", "ranges": ranges, "dataDir": node.Dir + "/ipam"})
	return conf
}

// newEnv builds bridge|ptp + podwall-ipam + podwall.
func newEnv(t *testing.T, layout, cniVersion string, subnets ...string) *env {
	t.Helper()
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	pw := podwallConf(node)
	opts := []harness.ConfOption{harness.WithChained(pw), harness.WithCNIVersion(cniVersion)}
	var conflist []byte
	if layout == "bridge" {
		conflist = harness.BridgeConflist(netName, "cni0", ipamConf(node, subnets...), opts...)
	} else {
		conflist = harness.PTPConflist(netName, ipamConf(node, subnets...), opts...)
	}
	return &env{t: t, node: node, nw: node.Network(t, conflist), layout: layout, podwall: pw}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// add attaches a new pod and returns its first IPv4 address.
func (e *env) add(name string) (*harness.Pod, netip.Addr) {
	e.t.Helper()
	pod := e.node.NewPod(e.t, "x", name)
	res, err := e.nw.Add(ctxFor(e.t, time.Minute), pod)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", name, err)
	}
	return pod, firstV4(e.t, res)
}

func firstV4(t *testing.T, res types.Result) netip.Addr {
	t.Helper()
	ips, err := harness.ResultIPs(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ips {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	t.Fatalf("no IPv4 address in %v", ips)
	return netip.Addr{}
}

func key(pod *harness.Pod) string { return policy.ChainKey(netName, pod.ContainerID, pod.IfName) }

// open stands in for the agent: it lets from's egress and to's ingress
// accept everything, so a failure afterwards is not podwall's doing.
func (e *env) open(from, to *harness.Pod) {
	e.t.Helper()
	e.node.MustRun(e.t, "iptables", "-w", "-I", "PODWALL-OUT-"+key(from), "1", "-j", "RETURN")
	e.node.MustRun(e.t, "iptables", "-w", "-I", "PODWALL-IN-"+key(to), "1", "-j", "RETURN")
}

func addr(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// denied asserts that from cannot connect to target within denyWait.
func denied(t *testing.T, from *harness.Pod, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), denyWait)
	defer cancel()
	if reply, err := from.ConnectTCP(ctx, target); err == nil {
		t.Errorf("%s/%s reached %s (%q): want denied", from.Namespace, from.Name, target, reply)
	}
}

// reaches asserts that from connects to target, retrying while a fresh
// veth settles; want is the greeting of the serving pod.
func reaches(t *testing.T, from *harness.Pod, target, want string) {
	t.Helper()
	var err error
	var reply string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		reply, err = from.ConnectTCP(ctx, target)
		cancel()
		if err == nil && reply == want {
			return
		}
	}
	t.Errorf("%s/%s to %s: %q, %v; want %q", from.Namespace, from.Name, target, reply, err, want)
}

// nodeReaches connects from the node itself, as the kubelet's probes do.
func (e *env) nodeReaches(target, want string) {
	e.t.Helper()
	var reply string
	err := e.node.Do(func() error {
		var lastErr error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			conn, err := net.DialTimeout("tcp", target, time.Second)
			if err != nil {
				lastErr = err
				continue
			}
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			reply, err = bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err == nil {
				return nil
			}
			lastErr = err
		}
		return lastErr
	})
	if err != nil || strings.TrimSpace(reply) != want {
		e.t.Errorf("node to %s: %q, %v; want %q", target, reply, err, want)
	}
}

// ourRules returns the lines of the node's iptables/ip6tables-save that
// belong to podwall.
func (e *env) ourRules() []string {
	e.t.Helper()
	var out []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(e.node.MustRun(e.t, cmd), "\n") {
			if strings.Contains(line, "PODWALL") {
				out = append(out, cmd+": "+line)
			}
		}
	}
	return out
}

// deleteRulesMatching deletes the rules of chain whose iptables -S line
// contains substr, and fails the test unless there is one.
func (e *env) deleteRulesMatching(cmd, chain, substr string) {
	e.t.Helper()
	var numbers []int
	n := 0
	for _, line := range strings.Split(e.node.MustRun(e.t, cmd, "-w", "-S", chain), "\n") {
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		n++
		if strings.Contains(line, substr) {
			numbers = append(numbers, n)
		}
	}
	if len(numbers) == 0 {
		e.t.Fatalf("%s: no rule in %s contains %q", cmd, chain, substr)
	}
	for i := len(numbers) - 1; i >= 0; i-- {
		e.node.MustRun(e.t, cmd, "-w", "-D", chain, strconv.Itoa(numbers[i]))
	}
}

func (e *env) ourRulesWith(s string) int {
	n := 0
	for _, l := range e.ourRules() {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func cniCode(err error) uint {
	var perr *harness.PluginError
	if errors.As(err, &perr) && perr.CNI != nil {
		return perr.CNI.Code
	}
	var terr *types.Error
	if errors.As(err, &terr) {
		return terr.Code
	}
	return 0
}

// stdin is the podwall config as a runtime passes it, with extra keys.
func (e *env) stdin(extra map[string]any) []byte {
	e.t.Helper()
	conf := e.podwall
	var err error
	for k, v := range map[string]any{"name": netName, "cniVersion": harness.DefaultCNIVersion} {
		if conf, err = harness.InjectJSON(conf, k, v); err != nil {
			e.t.Fatal(err)
		}
	}
	for k, v := range extra {
		if conf, err = harness.InjectJSON(conf, k, v); err != nil {
			e.t.Fatal(err)
		}
	}
	return conf
}

// connect is Pod.ConnectTCP bounded by d.
func connect(from *harness.Pod, target string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return from.ConnectTCP(ctx, target)
}

var jsonUnmarshal = json.Unmarshal

var harnessIPs = harness.ResultIPs

// withDataplane runs fn with a Dataplane in the node, as the plugin would.
func (e *env) withDataplane(fn func(ctx context.Context, d *dataplane.Dataplane) error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := e.node.Do(func() error {
		d, err := dataplane.New(dataplane.Config{StateDir: e.node.Dir}, nil)
		if err != nil {
			return err
		}
		return fn(ctx, d)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}
