package ipam_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/podwall/podwall/ipam"
)

func TestForeignRoutes(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.244.1.0/24","draining":true},{"subnet":"100.64.1.0/24"},{"subnet":"fd00:64:1::/64"}]}`)
	route := func(dst, kind, name string) ipam.NodeRoute {
		return ipam.NodeRoute{Dst: netip.MustParsePrefix(dst), LinkKind: kind, LinkName: name, Table: 254}
	}
	for _, tc := range []struct {
		name    string
		route   ipam.NodeRoute
		foreign bool
	}{
		{"bridge route equal to a range", route("100.64.1.0/24", "bridge", "pw0"), false},
		{"bridge route of a draining range", route("10.244.1.0/24", "bridge", "pw0"), false},
		{"v6 bridge route equal to a range", route("fd00:64:1::/64", "bridge", "pw0"), false},
		{"bridge route larger than the range", route("100.64.0.0/16", "bridge", "docker0"), true},
		{"bridge route smaller than the range", route("100.64.1.0/25", "bridge", "br-lan"), true},
		{"veth host route inside a range", route("100.64.1.7/32", "veth", "veth1234"), false},
		{"veth v6 host route inside a range", route("fd00:64:1::7/128", "veth", "veth1234"), false},
		{"veth host route in a draining range", route("10.244.1.9/32", "veth", "veth99"), false},
		{"veth non-host route", route("100.64.1.0/28", "veth", "veth1234"), true},
		{"veth v6 non-host route", route("fd00:64:1::/120", "veth", "veth1234"), true},
		{"vpn route", route("100.64.1.128/25", "tun", "tun0"), true},
		{"connected LAN around the range", route("100.64.0.0/10", "", "eth0"), true},
		{"host route through the uplink", route("100.64.1.50/32", "device", "eth0"), true},
		{"blackhole (no link kind)", route("100.64.1.64/26", "", ""), true},
		{"v6 blackhole", route("fd00:64:1:0:8000::/65", "", ""), true},
		{"v4 default route", route("0.0.0.0/0", "device", "eth0"), false},
		{"v6 default route", route("::/0", "device", "eth0"), false},
		{"default route with no link", route("0.0.0.0/0", "", ""), false},
		{"route beside the ranges", route("192.168.0.0/16", "", "eth0"), false},
		{"adjacent route", route("100.64.2.0/24", "bridge", "br1"), false},
		{"v6 route beside the ranges", route("fd00:64:2::/64", "", "eth0"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := cfg.ForeignRoutes([]ipam.NodeRoute{tc.route}, nil)
			if tc.foreign != (len(got) == 1) {
				t.Errorf("%v: foreign = %v, want %v", tc.route, len(got) == 1, tc.foreign)
			}
		})
	}
	// Classification is per route and keeps the input order.
	in := []ipam.NodeRoute{
		route("0.0.0.0/0", "device", "eth0"),
		route("100.64.1.128/25", "tun", "tun0"),
		route("100.64.1.0/24", "bridge", "pw0"),
		route("100.64.1.3/32", "veth", "veth3"),
		route("fd00:64:1::/80", "", ""),
	}
	got := cfg.ForeignRoutes(in, nil)
	if want := []ipam.NodeRoute{in[1], in[4]}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if want := []netip.Prefix{in[1].Dst, in[4].Dst}; !slices.Equal(ipam.Prefixes(got), want) {
		t.Errorf("prefixes %v", ipam.Prefixes(got))
	}
}

func TestNodeRouteString(t *testing.T) {
	for _, tc := range []struct {
		r    ipam.NodeRoute
		want string
	}{
		{ipam.NodeRoute{Dst: netip.MustParsePrefix("10.0.0.0/8"), LinkName: "tun0", Table: 254}, "10.0.0.0/8 dev tun0"},
		{ipam.NodeRoute{Dst: netip.MustParsePrefix("10.0.0.0/8")}, "10.0.0.0/8"},
		{ipam.NodeRoute{Dst: netip.MustParsePrefix("10.0.0.0/8"), LinkName: "wg0", Table: 51820}, "10.0.0.0/8 dev wg0 table 51820"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
