package ipam_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
)

func prefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// "node" stays a placeholder at parse time (parsing reads no file), in its
// place among the other ranges, with the default file.
func TestNodeRangeParsesAsPlaceholder(t *testing.T) {
	cfg, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"100.64.0.0/24","draining":true},{"subnet":"node"},{"subnet":"fd00:9::/64"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeRanges == nil || cfg.NodeRanges.Index != 1 || cfg.NodeRanges.Draining {
		t.Fatalf("NodeRanges = %+v, want slot at 1, active", cfg.NodeRanges)
	}
	if cfg.NodeCIDRsFile != ipam.DefaultNodeCIDRsFile {
		t.Errorf("NodeCIDRsFile = %q, want the default %q", cfg.NodeCIDRsFile, ipam.DefaultNodeCIDRsFile)
	}
	if len(cfg.Ranges) != 2 {
		t.Fatalf("Ranges = %v, want the two concrete ones", cfg.Ranges)
	}
	got := cfg.Canonical()
	var subnets []string
	for _, r := range got.Ranges {
		subnets = append(subnets, r.Subnet)
	}
	if strings.Join(subnets, " ") != "100.64.0.0/24 node fd00:9::/64" || got.NodeCIDRsFile != ipam.DefaultNodeCIDRsFile {
		t.Errorf("Canonical = %v, file %q", subnets, got.NodeCIDRsFile)
	}
}

// The podCIDRs take the place of "node", in order, each with its first
// address as gateway, and are checked like any configured range.
func TestWithNodeCIDRsExpandsInPlace(t *testing.T) {
	cfg, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"100.64.0.0/24","draining":true},{"subnet":"node"},{"subnet":"100.65.0.0/24"}],"nodeCIDRsFile":"/run/x.json"}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeCIDRsFile != "/run/x.json" {
		t.Errorf("NodeCIDRsFile = %q", cfg.NodeCIDRsFile)
	}
	out, err := cfg.WithNodeCIDRs(prefixes(t, "10.244.3.0/24", "fd00:10:244:3::/64"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if out.NodeRanges != nil || cfg.NodeRanges == nil {
		t.Fatal("the result must be resolved and the input left alone")
	}
	want := []ipam.Range{
		{Subnet: netip.MustParsePrefix("100.64.0.0/24"), Gateway: netip.MustParseAddr("100.64.0.1"), Draining: true},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Gateway: netip.MustParseAddr("10.244.3.1"), FromNode: true},
		{Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"), Gateway: netip.MustParseAddr("fd00:10:244:3::1"), FromNode: true},
		{Subnet: netip.MustParsePrefix("100.65.0.0/24"), Gateway: netip.MustParseAddr("100.65.0.1")},
	}
	if len(out.Ranges) != len(want) {
		t.Fatalf("Ranges = %+v", out.Ranges)
	}
	for i := range want {
		if out.Ranges[i] != want[i] {
			t.Errorf("Ranges[%d] = %+v, want %+v", i, out.Ranges[i], want[i])
		}
	}
	if fams := out.ActiveFamilies(); len(fams) != 2 || fams[0] != 4 || fams[1] != 6 {
		t.Errorf("ActiveFamilies = %v", fams)
	}
	// The snapshot podwallctl reads holds the ranges in effect.
	if c := out.Canonical(); len(c.Ranges) != 4 || c.Ranges[1].Subnet != "10.244.3.0/24" || c.NodeCIDRsFile != "" {
		t.Errorf("Canonical of the resolved config = %+v", c)
	}
	draining, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"node","draining":true},{"subnet":"100.65.0.0/24"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	out, err = draining.WithNodeCIDRs(prefixes(t, "10.244.3.0/24"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if !out.Ranges[0].Draining || out.Ranges[0].Subnet.String() != "10.244.3.0/24" {
		t.Errorf("draining node range = %+v", out.Ranges[0])
	}
	static, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"100.65.0.0/24"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := static.WithNodeCIDRs(nil, "test"); err != nil || out != static {
		t.Errorf("a config without node ranges must pass through: %v", err)
	}
}

func TestNodeRangeBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		name, ipam string
		frags      []string
	}{
		{"gateway with node", `{"ranges":[{"subnet":"node","gateway":"10.0.0.1"}]}`, []string{"ranges[0]", "gateway", `"node"`}},
		{"node twice", `{"ranges":[{"subnet":"node"},{"subnet":"node","draining":true}]}`, []string{"ranges[1]", "twice"}},
		{"relative file", `{"ranges":[{"subnet":"node"}],"nodeCIDRsFile":"node.json"}`, []string{`"node.json"`, "absolute"}},
		{"other range still checked", `{"ranges":[{"subnet":"node"},{"subnet":"10.96.0.0/24"}],"serviceCIDRs":["10.96.0.0/12"]}`, []string{"10.96.0.0/24", "10.96.0.0/12"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ipam.ParseConfig(netconf("pods", tc.ipam))
			if err == nil {
				t.Fatal("accepted")
			}
			code, msg := cniCode(t, err)
			if code != types.ErrInvalidNetworkConfig {
				t.Errorf("code %d, want 7 (%s)", code, msg)
			}
			for _, f := range tc.frags {
				if !strings.Contains(msg, f) {
					t.Errorf("message %q does not name %s", msg, f)
				}
			}
		})
	}
}

// Every rule of the configured ranges holds for the Node's podCIDRs.
func TestWithNodeCIDRsRefusesWhatARangeMayNot(t *testing.T) {
	for _, tc := range []struct {
		name, ipam string
		cidrs      []string
		code       uint
		frags      []string
	}{
		{"no podCIDR yet", `{"ranges":[{"subnet":"node"}]}`, nil, types.ErrTryAgainLater, []string{"SRC", "no podCIDR"}},
		{"overlaps another range", `{"ranges":[{"subnet":"10.244.0.0/16","draining":true},{"subnet":"node"}]}`, []string{"10.244.3.0/24"},
			types.ErrInvalidNetworkConfig, []string{"10.244.3.0/24", "podCIDR of the Node", "10.244.0.0/16", "SRC"}},
		{"inside a service CIDR", `{"ranges":[{"subnet":"node"}],"serviceCIDRs":["10.96.0.0/12"]}`, []string{"10.100.0.0/24"},
			types.ErrInvalidNetworkConfig, []string{"10.100.0.0/24", "service CIDR 10.96.0.0/12", "SRC"}},
		{"excluded entirely", `{"ranges":[{"subnet":"node"}],"exclude":["10.244.0.0/16"]}`, []string{"10.244.3.0/24"},
			types.ErrInvalidNetworkConfig, []string{"10.244.3.0/24", "no allocatable address"}},
		{"two podCIDRs overlapping", `{"ranges":[{"subnet":"node"}]}`, []string{"10.244.0.0/16", "10.244.3.0/24"},
			types.ErrInvalidNetworkConfig, []string{"10.244.3.0/24", "10.244.0.0/16"}},
		{"too small", `{"ranges":[{"subnet":"node"}]}`, []string{"10.244.3.4/31"}, types.ErrInvalidNetworkConfig, []string{"10.244.3.4/31", "too small"}},
		{"host bits", `{"ranges":[{"subnet":"node"}]}`, []string{"10.244.3.4/24"}, types.ErrInvalidNetworkConfig, []string{"10.244.3.4/24", "canonical"}},
		{"mapped IPv4", `{"ranges":[{"subnet":"node"}]}`, []string{"::ffff:10.244.3.0/120"}, types.ErrInvalidNetworkConfig, []string{"::ffff:10.244.3.0/120"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ipam.ParseConfig(netconf("pods", tc.ipam))
			if err != nil {
				t.Fatal(err)
			}
			var cidrs []netip.Prefix
			for _, s := range tc.cidrs {
				cidrs = append(cidrs, netip.MustParsePrefix(s))
			}
			out, err := cfg.WithNodeCIDRs(cidrs, "SRC")
			if err == nil {
				t.Fatalf("accepted: %+v", out.Ranges)
			}
			code, msg := cniCode(t, err)
			if code != tc.code {
				t.Errorf("code %d, want %d (%s)", code, tc.code, msg)
			}
			for _, f := range tc.frags {
				if !strings.Contains(msg, f) {
					t.Errorf("message %q does not name %s", msg, f)
				}
			}
		})
	}
}
