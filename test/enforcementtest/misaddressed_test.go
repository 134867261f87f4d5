package enforcementtest

import (
	"net/netip"
	"strings"
	"testing"
)

// A frame bridged to a pod's port must be for one of the pod's addresses:
// a pod that claims another pod's address, or one that no pod has, gets
// nothing through its port, even where policy would let it through.
func TestMisaddressedFramesDropped(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.52.0/24")
	a, _ := e.add("a")
	b, _ := e.add("b")
	c, ipC := e.add("c")
	b.ServeTCP(t, 8080)
	e.open(a, c)
	// /sys shows the namespace that mounted it, not b's: ask netlink.
	fields := strings.Fields(b.MustRun(t, "ip", "-br", "link", "show", "dev", "eth0"))
	if len(fields) < 3 {
		t.Fatalf("MAC of b's eth0: %q", fields)
	}
	macB := fields[2]
	// a sends to them at b's MAC, as if b answered ARP for them.
	targets := []netip.Addr{ipC, netip.MustParseAddr("100.64.52.201")}
	for _, target := range targets {
		b.MustRun(t, "ip", "addr", "add", target.String()+"/32", "dev", "eth0")
		a.MustRun(t, "ip", "neigh", "replace", target.String(), "lladdr", macB, "dev", "eth0", "nud", "permanent")
		denied(t, a, addr(target, 8080))
	}
	// Control: without the two rules that dropped them (c's address only
	// through c's port; nothing leaves through the bridge's ports unless a
	// pod's address claimed it), both reach b.
	e.deleteRulesMatching("iptables", "PODWALL-T-"+key(c), "only through")
	e.deleteRulesMatching("iptables", "PODWALL-MISADDRESSED", "podwall bridge=")
	for _, target := range targets {
		reaches(t, a, addr(target, 8080), "x/b")
	}
}
