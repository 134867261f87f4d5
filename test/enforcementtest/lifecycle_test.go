package enforcementtest

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/harness"
)

// A pod sending from an address that is not its own is dropped, even
// where policy would let its own address through.
func TestSpoofedSourceDropped(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.50.0/24")
	a, ipA := e.add("a")
	b, ipB := e.add("b")
	b.ServeTCP(t, 8080)
	e.open(a, b)
	target := addr(ipB, 8080)
	reaches(t, a, target, "x/b")

	// Two kinds of foreign source: an address no pod has, and the
	// address of another pod on the node.
	c, ipC := e.add("c")
	for _, spoofed := range []netip.Addr{netip.MustParseAddr("100.64.50.200"), ipC} {
		a.MustRun(t, "ip", "addr", "add", spoofed.String()+"/32", "dev", "eth0")
		fromSpoofed := func() error {
			return a.Do(func() error {
				d := net.Dialer{Timeout: denyWait, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(spoofed, 0))}
				conn, err := d.Dial("tcp", target)
				if err == nil {
					conn.Close()
				}
				return err
			})
		}
		if err := fromSpoofed(); err == nil {
			t.Errorf("connection from spoofed %s (pod is %s) got through", spoofed, ipA)
		}
		a.MustRun(t, "ip", "addr", "del", spoofed.String()+"/32", "dev", "eth0")
	}
	// The two rules that drop them: the bridge's entry in
	// PODWALL-ANTISPOOF (what no dispatch rule claimed) and the interface
	// check in c's from-pod chain (what came to it by c's address).
	e.deleteRulesMatching("iptables", "PODWALL-F-"+key(c), "anti-spoofing")
	if err := e.nw.Check(ctxFor(t, time.Minute), c); err == nil || !strings.Contains(err.Error(), "anti-spoofing") {
		t.Errorf("CHECK after removing the interface check: %v", err)
	}
	e.deleteRulesMatching("iptables", "PODWALL-ANTISPOOF", "podwall bridge=")
	if err := e.nw.Check(ctxFor(t, time.Minute), a); err == nil || !strings.Contains(err.Error(), "anti-spoofing") {
		t.Errorf("CHECK after removing anti-spoofing: %v", err)
	}
}

// CHECK reports missing dispatch and chains, and DEL still cleans up a
// tampered pod completely.
func TestCheckDetectsTampering(t *testing.T) {
	e := newEnv(t, "ptp", "1.1.0", "100.64.51.0/24")
	a, _ := e.add("a")
	check := func() error { return e.nw.Check(ctxFor(t, time.Minute), a) }
	if err := check(); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	e.node.MustRun(t, "iptables", "-w", "-D", "PODWALL-EGRESS", "1")
	if err := check(); err == nil {
		t.Error("CHECK passed without the egress dispatch rule")
	} else {
		t.Logf("CHECK: %v", err)
	}
	e.deleteRulesMatching("ip6tables", "PODWALL-MISADDRESSED", " key="+key(a)+" ")
	e.node.MustRun(t, "ip6tables", "-w", "-F", "PODWALL-T-"+key(a))
	e.node.MustRun(t, "ip6tables", "-w", "-X", "PODWALL-T-"+key(a))
	if err := check(); err == nil || !strings.Contains(err.Error(), "PODWALL-T-") {
		t.Errorf("CHECK without the IPv6 to-pod chain: %v", err)
	}
	if err := e.nw.Del(ctxFor(t, time.Minute), a); err != nil {
		t.Fatal(err)
	}
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("left after DEL:\n%s", strings.Join(left, "\n"))
	}
}

// runPlugin runs the podwall binary alone, as a runtime would, with the
// pod's identity but optionally no CNI_NETNS.
func (e *env) runPlugin(command string, pod *harness.Pod, withNetns bool, stdin []byte) ([]byte, error) {
	e.t.Helper()
	cmd, err := e.node.PluginCommand(ctxFor(e.t, time.Minute), "podwall", command, pod, stdin)
	if err != nil {
		e.t.Fatal(err)
	}
	if !withNetns {
		env := cmd.Env[:0:0]
		for _, kv := range cmd.Env {
			if !strings.HasPrefix(kv, "CNI_NETNS=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
	}
	var out strings.Builder
	cmd.Stdout = &out
	err = e.node.Do(func() error { return cmd.Run() })
	if ee, ok := err.(*exec.ExitError); ok {
		var cniErr types.Error
		_ = jsonUnmarshal([]byte(out.String()), &cniErr)
		return []byte(out.String()), &harness.PluginError{ExitCode: ee.ExitCode(), Stdout: []byte(out.String()), CNI: &cniErr}
	}
	return []byte(out.String()), err
}

// DEL needs neither prevResult nor the pod's netns: the sandbox may be gone.
func TestDelWithoutNetnsOrPrevResult(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.52.0/24")
	a, _ := e.add("a")
	if e.ourRulesWith(key(a)) == 0 {
		t.Fatal("no chains after ADD")
	}
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := e.runPlugin("DEL", a, false, e.stdin(nil)); err != nil {
			t.Fatalf("DEL without netns: %v", err)
		}
	}
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("left after DEL:\n%s", strings.Join(left, "\n"))
	}
}

// GC removes the chains of attachments of this network that are not valid,
// also ones libcni never cached, and keeps the valid ones.
func TestGCRemovesOrphans(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.53.0/24")
	keep, _ := e.add("keep")
	orphan, _ := e.add("orphan")
	// An attachment of another network on the same node is not ours to GC.
	foreign := dataplane.Pod{Key: policy.ChainKey("othernet", "cid", "eth0"), Network: "othernet", ContainerID: "cid",
		IfName: "eth0", Namespace: "y", Name: "f", HostIface: "vethforeign", Layout: dataplane.LayoutRouted,
		IPs: []netip.Addr{netip.MustParseAddr("100.64.53.250")}}
	e.withDataplane(func(ctx context.Context, d *dataplane.Dataplane) error { return d.EnsurePod(ctx, foreign) })
	// A runtime that lost its cache: the orphan is unknown to libcni, so
	// only podwall's own GC can find it.
	if _, err := e.runPlugin("GC", nil, false, e.stdin(map[string]any{})); cniCode(err) != 7 {
		t.Errorf("GC without cni.dev/valid-attachments: %v, want code 7", err)
	}
	if e.ourRulesWith(key(orphan)) == 0 {
		t.Fatal("refused GC removed something")
	}
	valid := harness.ValidAttachments(keep)
	if _, err := e.runPlugin("GC", nil, false, e.stdin(map[string]any{"cni.dev/valid-attachments": valid})); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if e.ourRulesWith(key(orphan)) != 0 {
		t.Errorf("orphan's chains survived GC")
	}
	if e.ourRulesWith(key(keep)) == 0 {
		t.Errorf("valid pod's chains removed by GC")
	}
	// libcni's GC sends null for an empty list: everything of the network goes.
	if err := e.nw.GC(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("GC through libcni: %v", err)
	}
	if e.ourRulesWith(foreign.Key) == 0 {
		t.Errorf("GC of %s removed a pod of another network", netName)
	}
	e.withDataplane(func(ctx context.Context, d *dataplane.Dataplane) error { return d.RemovePod(ctx, foreign.Key) })
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("left after GC of everything:\n%s", strings.Join(left, "\n"))
	}
}

// Bad configurations are refused with the CNI error code, writing nothing.
func TestBadConfig(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.54.0/24")
	pod := e.node.NewPod(t, "x", "a")
	for _, tc := range []struct {
		name  string
		stdin []byte
		code  uint
	}{
		{"no prevResult", e.stdin(nil), 7},
		{"bad timeout", e.stdin(map[string]any{"agentTimeout": "soon", "prevResult": map[string]any{"cniVersion": "1.1.0"}}), 7},
		{"relative socket", e.stdin(map[string]any{"agentSocket": "agent.sock"}), 7},
		{"not JSON", []byte("{"), 6},
		{"prevResult without veth", e.stdin(map[string]any{"prevResult": map[string]any{"cniVersion": "1.1.0",
			"interfaces": []map[string]any{{"name": "eth0", "sandbox": pod.Path()}}}}), 7},
	} {
		_, err := e.runPlugin("ADD", pod, true, tc.stdin)
		if got := cniCode(err); got != tc.code {
			t.Errorf("%s: %v (code %d), want code %d", tc.name, err, got, tc.code)
		}
	}
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("refused ADDs wrote:\n%s", strings.Join(left, "\n"))
	}
}

// STATUS probes the kernel and leaves nothing; it answers 50 when podwall
// cannot work (here: its state directory cannot be created).
func TestStatus(t *testing.T) {
	e := newEnv(t, "ptp", "1.1.0", "100.64.55.0/24")
	if err := e.nw.Status(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("STATUS left:\n%s", strings.Join(left, "\n"))
	}
	_, err := e.runPlugin("STATUS", nil, false, e.stdin(map[string]any{"agentSocket": "/proc/podwall/agent.sock"}))
	if cniCode(err) != 50 {
		t.Errorf("STATUS with an unusable state dir: %v, want code 50", err)
	}
}
