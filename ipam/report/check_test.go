package report

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/podwall/podwall/ipam"
)

func route(dst, kind, name string) ipam.NodeRoute {
	return ipam.NodeRoute{Dst: netip.MustParsePrefix(dst), LinkKind: kind, LinkName: name, Table: 254}
}

func TestCheckReportsEveryOverlap(t *testing.T) {
	cfg := mustConfig(t, `{"type": "podwall-ipam",
		"ranges": [{"subnet": "10.244.1.0/24", "draining": true},
		           {"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"},
		           {"subnet": "fd00:64:1::/64"}],
		"exclude": ["100.64.1.128/26", "192.0.2.0/24"],
		"serviceCIDRs": ["10.96.0.0/12"]}`)
	routes := []ipam.NodeRoute{
		route("0.0.0.0/0", "", ""), // default: never a collision
		route("100.64.1.0/24", "bridge", "cni0"),
		route("100.64.1.0/28", "dummy", "br-up"),
		route("100.64.1.200/32", "veth", "veth1"),
		route("100.64.1.201/32", "veth", "veth2"),
		route("10.244.0.0/16", "wireguard", "wg0"),
		route("192.168.0.0/24", "ether", "eth0"), // overlaps nothing
	}
	rep := Check(cfg, routes)
	want := []Finding{
		{LevelWarning, "draining range 10.244.1.0/24 overlaps route 10.244.0.0/16 dev wg0 (256 addresses, including gateway 10.244.1.1; pods still holding them cannot reach what is behind the route)"},
		{LevelInfo, "range 10.244.1.0/24 (draining): hands out no new address; existing allocations stay valid"},
		{LevelConflict, "active range 100.64.1.0/24 overlaps route 100.64.1.0/28 dev br-up (16 addresses unusable, including gateway 100.64.1.1)"},
		{LevelInfo, "route 100.64.1.0/24 dev cni0 is the pod network's own (bridge of range 100.64.1.0/24)"},
		{LevelInfo, "range 100.64.1.0/24: 2 per-pod routes through veths are the pod network's own"},
		{LevelInfo, "active range 100.64.1.0/24 overlaps exclusion 100.64.1.128/26 (64 addresses excluded)"},
		{LevelInfo, "range 100.64.1.0/24 (active): 175 allocatable addresses (14 more are inside foreign routes)"},
		{LevelOK, "range fd00:64:1::/64 (active): 18446744073709551614 allocatable addresses"},
		{LevelInfo, "exclusion 192.0.2.0/24 overlaps no range: it has no effect"},
	}
	if !slices.Equal(rep.Findings, want) {
		t.Errorf("findings:\n%s\nwant:\n%s", dump(rep.Findings), dump(want))
	}
	if rep.Count(LevelConflict) != 1 || rep.Count(LevelWarning) != 1 {
		t.Errorf("counts: %d conflicts, %d warnings", rep.Count(LevelConflict), rep.Count(LevelWarning))
	}
}

func TestCheckCleanConfig(t *testing.T) {
	cfg := mustConfig(t, `{"ranges": [{"subnet": "100.64.1.0/24"}], "exclude": ["100.64.1.128/26"]}`)
	rep := Check(cfg, []ipam.NodeRoute{route("100.64.1.0/24", "bridge", "cni0")})
	if rep.Count(LevelConflict) != 0 || rep.Count(LevelWarning) != 0 {
		t.Errorf("unexpected trouble: %s", dump(rep.Findings))
	}
	last := rep.Findings[len(rep.Findings)-1]
	if last != (Finding{LevelOK, "range 100.64.1.0/24 (active): 189 allocatable addresses"}) {
		t.Errorf("last finding = %+v", last)
	}
}

// Validation refuses these, but Check must not rely on it.
func TestCheckOverlapsThatValidationRefuses(t *testing.T) {
	cfg := &ipam.Config{
		Ranges: []ipam.Range{
			{Subnet: netip.MustParsePrefix("10.0.0.0/16"), Gateway: netip.MustParseAddr("10.0.0.1"), Draining: true},
			{Subnet: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("10.0.1.1")},
		},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.1.128/25")},
	}
	rep := Check(cfg, nil)
	for _, w := range []Finding{
		{LevelWarning, "draining range 10.0.0.0/16 overlaps service CIDR 10.0.1.128/25 (128 addresses)"},
		{LevelConflict, "active range 10.0.1.0/24 overlaps service CIDR 10.0.1.128/25 (128 addresses)"},
		{LevelConflict, "active range 10.0.1.0/24 overlaps draining range 10.0.0.0/16"},
	} {
		if !slices.Contains(rep.Findings, w) {
			t.Errorf("missing %+v in\n%s", w, dump(rep.Findings))
		}
	}
}

func TestWriteCheck(t *testing.T) {
	var buf bytes.Buffer
	err := WriteCheck(&buf, CheckReport{Findings: []Finding{
		{LevelConflict, "active range 100.64.1.0/24 overlaps route 100.64.1.0/28 dev br-up (16 addresses unusable)"},
		{LevelOK, "range fd00::/64 (active): 5 allocatable addresses"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := "CONFLICT active range 100.64.1.0/24 overlaps route 100.64.1.0/28 dev br-up (16 addresses unusable)\n" +
		"ok range fd00::/64 (active): 5 allocatable addresses\n" +
		"summary: 1 conflict, 0 warnings\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func dump(fs []Finding) string {
	var b bytes.Buffer
	WriteCheck(&b, CheckReport{Findings: fs})
	return b.String()
}
