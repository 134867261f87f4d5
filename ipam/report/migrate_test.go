package report

import (
	"net/netip"
	"slices"
	"testing"
)

func TestPodsToMigrate(t *testing.T) {
	cfg := mustConfig(t, `{"type": "podwall-ipam", "ranges": [
		{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"},
		{"subnet": "fd00:244::/64", "draining": true}, {"subnet": "fd00:64::/64"}]}`)
	draining := DrainingRanges(cfg)
	if want := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244::/64")}; !slices.Equal(draining, want) {
		t.Fatalf("draining %v, want %v", draining, want)
	}
	ip := netip.MustParseAddr
	pods := []Pod{
		{Namespace: "b", Name: "dual", IPs: []netip.Addr{ip("100.64.1.3"), ip("fd00:244::3")}},
		{Namespace: "a", Name: "mapped", IPs: []netip.Addr{ip("::ffff:10.244.1.4")}},
		{Namespace: "a", Name: "both", IPs: []netip.Addr{ip("10.244.1.5"), ip("fd00:244::5")}},
		{Namespace: "a", Name: "moved", IPs: []netip.Addr{ip("100.64.1.5"), ip("fd00:64::5")}},
		{Namespace: "a", Name: "host", IPs: []netip.Addr{ip("10.244.1.6")}, HostNetwork: true},
		{Namespace: "a", Name: "done", IPs: []netip.Addr{ip("10.244.1.7")}, Finished: true},
		{Namespace: "a", Name: "noip"},
	}
	var got []string
	for _, c := range PodsToMigrate(draining, pods) {
		s := c.Pod.Namespace + "/" + c.Pod.Name
		for _, a := range c.Addresses {
			s += " " + a.IP.String() + "@" + a.Range.String()
		}
		got = append(got, s)
	}
	want := []string{
		"a/both 10.244.1.5@10.244.1.0/24 fd00:244::5@fd00:244::/64",
		"a/mapped 10.244.1.4@10.244.1.0/24",
		"b/dual fd00:244::3@fd00:244::/64",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if PodsToMigrate(nil, pods) != nil {
		t.Error("candidates without a draining range")
	}
}

func TestMergeDraining(t *testing.T) {
	p := netip.MustParsePrefix
	got := MergeDraining([]netip.Prefix{p("10.0.0.0/24"), p("10.0.1.0/24")}, nil, []netip.Prefix{p("10.0.1.0/24"), p("10.0.2.0/24")})
	if want := []netip.Prefix{p("10.0.0.0/24"), p("10.0.1.0/24"), p("10.0.2.0/24")}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
