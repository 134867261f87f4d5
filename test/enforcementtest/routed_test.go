package enforcementtest

import (
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// Traffic routed into the bridge (from another node, the outside, or a
// hostPort DNAT) is not bridged, so physdev cannot name its output port;
// it must meet the destination pod's ingress all the same.
func TestRoutedIntoBridgeIsIngress(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.57.0/24")
	b, ipB := e.add("b")
	b.ServeTCP(t, 8080)
	// "ext" stands for anything outside the bridge: a routed veth without
	// podwall.
	outside := e.node.Network(t, harness.PTPConflist("outside", harness.HostLocalIPAM(e.node.Dir+"/outside", "100.64.157.0/24")))
	ext := e.node.NewPod(t, "y", "ext")
	if _, err := outside.Add(ctxFor(t, time.Minute), ext); err != nil {
		t.Fatal(err)
	}
	ext.MustRun(t, "ip", "route", "add", "100.64.57.0/24", "via", "100.64.157.1")
	b.MustRun(t, "ip", "route", "add", "100.64.157.0/24", "via", "100.64.57.1")
	target := addr(ipB, 8080)
	denied(t, ext, target)
	e.node.MustRun(t, "iptables", "-w", "-I", "PODWALL-IN-"+key(b), "1", "-j", "RETURN")
	reaches(t, ext, target, "x/b")
	if t.Failed() {
		t.Log(b.MustRun(t, "ip", "route"), ext.MustRun(t, "ip", "route"), e.node.MustRun(t, "ip", "route"), e.node.MustRun(t, "iptables-save", "-c"),
			e.node.MustRun(t, "sysctl", "net.ipv4.ip_forward"))
	}
}
