package enforcementtest

import (
	"net/netip"
	"testing"
	"time"
)

// A dual-stack pod is enforced by ip6tables exactly as by iptables.
func TestIPv6Enforced(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.60.0/24", "fd00:64:60::/64")
	a, _ := e.add("a")
	b := e.node.NewPod(t, "x", "b")
	b.ServeTCP(t, 8080)
	res, err := e.nw.Add(ctxFor(t, time.Minute), b)
	if err != nil {
		t.Fatal(err)
	}
	ips, err := harnessIPs(res)
	if err != nil {
		t.Fatal(err)
	}
	var v6 netip.Addr
	for _, p := range ips {
		if p.Addr().Is6() {
			v6 = p.Addr()
		}
	}
	if !v6.IsValid() {
		t.Fatalf("no IPv6 address in %v", ips)
	}
	target := addr(v6, 8080)
	e.node.MustRun(t, "ip6tables", "-w", "-I", "PODWALL-OUT-"+key(a), "1", "-j", "RETURN")
	e.node.MustRun(t, "ip6tables", "-w", "-I", "PODWALL-IN-"+key(b), "1", "-j", "RETURN")
	reaches(t, a, target, "x/b")
	// With b's ingress back to default deny, a is refused again; the IPv4
	// chains were never opened, so IPv6 passed only through ip6tables.
	e.node.MustRun(t, "ip6tables", "-w", "-D", "PODWALL-IN-"+key(b), "1")
	denied(t, a, target)
	e.nodeReaches(target, "x/b")
}

// A pod without an IPv6 address gets none through: addresses configured
// behind podwall's back are dropped both ways.
func TestIPv6DroppedWithoutAddress(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.61.0/24")
	a, _ := e.add("a")
	b, _ := e.add("b")
	b.ServeTCP(t, 8080)
	e.open(a, b) // IPv4 only
	a.MustRun(t, "ip", "addr", "add", "fd00:99::a/64", "dev", "eth0", "nodad")
	b.MustRun(t, "ip", "addr", "add", "fd00:99::b/64", "dev", "eth0", "nodad")
	target := "[fd00:99::b]:8080"
	denied(t, a, target)
	// Control: without the bridge's IPv6 drops of what no address claims,
	// the same connection works, so the drop was podwall's.
	e.deleteRulesMatching("ip6tables", "PODWALL-ANTISPOOF", "podwall bridge=")
	e.deleteRulesMatching("ip6tables", "PODWALL-MISADDRESSED", "podwall bridge=")
	reaches(t, a, target, "x/b")
}
