package ipamtest

import (
	"net/netip"
	"testing"

	"github.com/podwall/podwall/test/harness"
)

// 500 pods attached at once through the real bridge plugin: 500 distinct
// addresses, none excluded, none in the service range; after DEL the store
// is empty.
func TestConcurrentAddsThroughBridge(t *testing.T) {
	node := harness.NewNode(t)
	dataDir := node.Dir + "/ipam"
	conf := ipamConf{
		// The service range sits right behind the pod range, and the
		// exclusion in its middle, so that sloppy arithmetic would show.
		Ranges:       []rangeConf{{Subnet: "100.64.0.0/22"}},
		Exclude:      []string{"100.64.1.0/25", "100.64.0.77"},
		ServiceCIDRs: []string{"100.64.4.0/22"},
		DataDir:      dataDir,
	}
	nw := node.Network(t, harness.BridgeConflist("podnet", "cni0", conf.JSON(t)))
	pods, ips := addAll(t, node, nw, "p", 500, 0)

	excluded := []netip.Prefix{netip.MustParsePrefix("100.64.1.0/25"), netip.MustParsePrefix("100.64.0.77/32"), netip.MustParsePrefix("100.64.4.0/22")}
	seen := map[netip.Addr]int{}
	for i, got := range ips {
		if len(got) != 1 {
			t.Fatalf("pod %d got %v, want one IPv4 address", i, got)
		}
		a := got[0].Addr()
		if prev, dup := seen[a]; dup {
			t.Errorf("address %s handed to pods %d and %d", a, prev, i)
		}
		seen[a] = i
		for _, p := range excluded {
			if p.Contains(a) {
				t.Errorf("pod %d got %s inside %s", i, a, p)
			}
		}
		if a == netip.MustParseAddr("100.64.0.0") || a == netip.MustParseAddr("100.64.0.1") || a == netip.MustParseAddr("100.64.3.255") {
			t.Errorf("pod %d got network, gateway or broadcast address %s", i, a)
		}
	}
	if n := len(reservations(t, dataDir, "podnet")); n != 500 {
		t.Errorf("%d reservations in the store, want 500", n)
	}
	delAll(t, nw, pods)
	if left := reservations(t, dataDir, "podnet"); len(left) != 0 {
		t.Errorf("after DEL of every pod the store still holds %v", left)
	}
}
