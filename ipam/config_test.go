package ipam_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
)

// netconf wraps an ipam section in the configuration a main plugin passes on.
func netconf(name, ipamSection string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"` + name + `","type":"bridge","bridge":"pw0","ipam":` + ipamSection + `}`)
}

func cniCode(t *testing.T, err error) (uint, string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e.Code, e.Msg
}

func TestParseConfigRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
		code  uint
		frags []string
	}{
		{"not JSON", []byte(`{"cniVersion": "1.1.0", name`), types.ErrDecodingFailure, nil},
		{"empty input", []byte(``), types.ErrDecodingFailure, nil},
		{"ipam is not an object", netconf("pods", `"podwall-ipam"`), types.ErrDecodingFailure, nil},
		{"ranges of the wrong type", netconf("pods", `{"ranges":"10.0.0.0/24"}`), types.ErrDecodingFailure, []string{"ranges"}},
		{"no ipam section", []byte(`{"cniVersion":"1.1.0","name":"pods","type":"bridge"}`), types.ErrInvalidNetworkConfig, []string{"pods", "ipam"}},
		{"null ipam section", netconf("pods", `null`), types.ErrInvalidNetworkConfig, []string{"ipam"}},
		{"garbage CIDR", netconf("pods", `{"ranges":[{"subnet":"banana"}]}`), types.ErrInvalidNetworkConfig, []string{`"banana"`}},
		{"prefix too long", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/33"}]}`), types.ErrInvalidNetworkConfig, []string{"10.0.0.0/33"}},
		{"v6 prefix too long", netconf("pods", `{"ranges":[{"subnet":"fd00::/129"}]}`), types.ErrInvalidNetworkConfig, []string{"fd00::/129"}},
		{"host bits set", netconf("pods", `{"ranges":[{"subnet":"10.0.0.1/24"}]}`), types.ErrInvalidNetworkConfig, []string{"10.0.0.1/24", "10.0.0.0/24"}},
		{"bare address as range", netconf("pods", `{"ranges":[{"subnet":"10.0.0.1"}]}`), types.ErrInvalidNetworkConfig, []string{`"10.0.0.1"`}},
		{"mapped IPv4", netconf("pods", `{"ranges":[{"subnet":"::ffff:10.0.0.0/120"}]}`), types.ErrInvalidNetworkConfig, []string{"::ffff:10.0.0.0/120"}},
		{"zone in range", netconf("pods", `{"ranges":[{"subnet":"fe80::%eth0/64"}]}`), types.ErrInvalidNetworkConfig, []string{"fe80::%eth0/64"}},
		{"subnet missing", netconf("pods", `{"ranges":[{"gateway":"10.0.0.1"}]}`), types.ErrInvalidNetworkConfig, []string{"ranges[0].subnet"}},
		{"v4 range too small", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/31"}]}`), types.ErrInvalidNetworkConfig, []string{"10.0.0.0/31"}},
		{"v4 /32 range", netconf("pods", `{"ranges":[{"subnet":"10.0.0.7/32"}]}`), types.ErrInvalidNetworkConfig, []string{"10.0.0.7/32"}},
		{"v6 range too small", netconf("pods", `{"ranges":[{"subnet":"fd00::/127"}]}`), types.ErrInvalidNetworkConfig, []string{"fd00::/127"}},
		{"v6 /128 range", netconf("pods", `{"ranges":[{"subnet":"fd00::1/128"}]}`), types.ErrInvalidNetworkConfig, []string{"fd00::1/128"}},
		{"overlapping ranges", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/16"},{"subnet":"10.0.1.0/24"}]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.0/16", "10.0.1.0/24"}},
		{"duplicate range, one draining", netconf("pods", `{"ranges":[{"subnet":"10.0.1.0/24","draining":true},{"subnet":"10.0.1.0/24"}]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.1.0/24 overlaps range 10.0.1.0/24"}},
		{"overlapping v6 ranges", netconf("pods", `{"ranges":[{"subnet":"fd00:1::/64"},{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/16"}]}`),
			types.ErrInvalidNetworkConfig, []string{"fd00:1::/64", "fd00::/16"}},
		{"range inside a service CIDR", netconf("pods", `{"ranges":[{"subnet":"10.100.0.0/24"}],"serviceCIDRs":["10.96.0.0/12"]}`),
			types.ErrInvalidNetworkConfig, []string{"10.100.0.0/24", "10.96.0.0/12"}},
		{"service CIDR inside a draining range", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/8","draining":true},{"subnet":"100.64.0.0/24"}],"serviceCIDRs":["10.96.0.0/12"]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.0/8", "10.96.0.0/12"}},
		{"garbage service CIDR", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"serviceCIDRs":["10.96.0.0"]}`),
			types.ErrInvalidNetworkConfig, []string{"serviceCIDRs", `"10.96.0.0"`}},
		{"garbage exclusion", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"exclude":["10.0.0.300"]}`),
			types.ErrInvalidNetworkConfig, []string{"exclude", "10.0.0.300"}},
		{"exclusion with host bits", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"exclude":["10.0.0.129/25"]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.129/25"}},
		{"nothing left after exclusions", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/30"}],"exclude":["10.0.0.2"]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.0/30", "no allocatable address"}},
		{"excluded entirely by a wider prefix", netconf("pods", `{"ranges":[{"subnet":"fd00:5::/64"},{"subnet":"100.64.0.0/16"}],"exclude":["100.0.0.0/8"]}`),
			types.ErrInvalidNetworkConfig, []string{"100.64.0.0/16"}},
		{"garbage gateway", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24","gateway":"10.0.0.300"}]}`),
			types.ErrInvalidNetworkConfig, []string{"ranges[0].gateway", `"10.0.0.300"`}},
		{"gateway outside the range", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.1.0/24","gateway":"10.0.0.1"}]}`),
			types.ErrInvalidNetworkConfig, []string{"ranges[1].gateway", "10.0.0.1", "10.0.1.0/24"}},
		{"gateway of the other family", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24","gateway":"fd00::1"}]}`),
			types.ErrInvalidNetworkConfig, []string{"fd00::1", "10.0.0.0/24"}},
		{"gateway is the network address", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24","gateway":"10.0.0.0"}]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.0 ", "network"}},
		{"gateway is the broadcast address", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24","gateway":"10.0.0.255"}]}`),
			types.ErrInvalidNetworkConfig, []string{"10.0.0.255", "broadcast"}},
		{"gateway with a zone", netconf("pods", `{"ranges":[{"subnet":"fd00::/64","gateway":"fd00::1%eth0"}]}`),
			types.ErrInvalidNetworkConfig, []string{"fd00::1%eth0"}},
		{"unknown field", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"serviceCIDR":["10.96.0.0/12"]}`),
			types.ErrUnsupportedField, []string{"serviceCIDR"}},
		{"unknown field in a range", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24","drain":true}]}`),
			types.ErrUnsupportedField, []string{"drain"}},
		{"missing ranges", netconf("pods", `{"type":"podwall-ipam"}`), types.ErrInvalidNetworkConfig, []string{"ranges"}},
		{"empty ranges", netconf("pods", `{"ranges":[]}`), types.ErrInvalidNetworkConfig, []string{"ranges"}},
		{"relative dataDir", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"dataDir":"var/lib/podwall"}`),
			types.ErrInvalidNetworkConfig, []string{`"var/lib/podwall"`}},
		{"bad network name", netconf("../etc", `{"ranges":[{"subnet":"10.0.0.0/24"}]}`), types.ErrInvalidNetworkConfig, []string{`"../etc"`}},
		{"network name with a slash", netconf("a/b", `{"ranges":[{"subnet":"10.0.0.0/24"}]}`), types.ErrInvalidNetworkConfig, []string{`"a/b"`}},
		{"network name ..", netconf("..", `{"ranges":[{"subnet":"10.0.0.0/24"}]}`), types.ErrInvalidNetworkConfig, []string{`".."`}},
		{"empty network name", netconf("", `{"ranges":[{"subnet":"10.0.0.0/24"}]}`), types.ErrInvalidNetworkConfig, []string{`""`}},
		{"garbage route", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"routes":[{"dst":"default"}]}`),
			types.ErrInvalidNetworkConfig, []string{"routes[0].dst", `"default"`}},
		{"garbage route gateway", netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/24"}],"routes":[{"dst":"0.0.0.0/0","gw":"gw"}]}`),
			types.ErrInvalidNetworkConfig, []string{"routes[0].gw", `"gw"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ipam.ParseConfig(tc.input)
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			code, msg := cniCode(t, err)
			if code != tc.code {
				t.Errorf("code %d, want %d (message %q)", code, tc.code, msg)
			}
			for _, f := range tc.frags {
				if !strings.Contains(msg, f) {
					t.Errorf("message %q does not name %q", msg, f)
				}
			}
		})
	}
}

func TestParseConfigDualStack(t *testing.T) {
	cfg, err := ipam.ParseConfig(netconf("pods", `{"type":"podwall-ipam",
		"ranges":[{"subnet":"10.244.1.0/24","draining":true},
		          {"subnet":"100.64.1.0/24","gateway":"100.64.1.1"},
		          {"subnet":"fd00:64:1::/64"},
		          {"subnet":"100.64.2.0/24","gateway":"100.64.2.254"}],
		"exclude":["100.64.1.128/26","100.64.2.7","fd00:64:1::5"],
		"serviceCIDRs":["10.96.0.0/12","fd00:96::/108"],
		"dataDir":"/run/podwall-test",
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"100.64.1.1"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Network != "pods" || cfg.CNIVersion != "1.1.0" || cfg.DataDir != "/run/podwall-test" {
		t.Errorf("network %q version %q dataDir %q", cfg.Network, cfg.CNIVersion, cfg.DataDir)
	}
	wantRanges := []ipam.Range{
		{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1"), Draining: true},
		{Subnet: netip.MustParsePrefix("100.64.1.0/24"), Gateway: netip.MustParseAddr("100.64.1.1")},
		{Subnet: netip.MustParsePrefix("fd00:64:1::/64"), Gateway: netip.MustParseAddr("fd00:64:1::1")},
		{Subnet: netip.MustParsePrefix("100.64.2.0/24"), Gateway: netip.MustParseAddr("100.64.2.254")},
	}
	if !slices.Equal(cfg.Ranges, wantRanges) {
		t.Errorf("ranges %+v, want %+v", cfg.Ranges, wantRanges)
	}
	wantExclude := []netip.Prefix{netip.MustParsePrefix("100.64.1.128/26"), netip.MustParsePrefix("100.64.2.7/32"), netip.MustParsePrefix("fd00:64:1::5/128")}
	if !slices.Equal(cfg.Exclude, wantExclude) {
		t.Errorf("exclude %v, want %v", cfg.Exclude, wantExclude)
	}
	if got := cfg.ActiveFamilies(); !slices.Equal(got, []int{4, 6}) {
		t.Errorf("active families %v", got)
	}
	if len(cfg.Routes) != 2 || cfg.Routes[1].GW.String() != "100.64.1.1" {
		t.Errorf("routes %v", cfg.Routes)
	}
	if r, ok := cfg.RangeOf(netip.MustParseAddr("10.244.1.9")); !ok || !r.Draining {
		t.Errorf("RangeOf draining address: %+v %v", r, ok)
	}
	if _, ok := cfg.RangeOf(netip.MustParseAddr("10.245.0.1")); ok {
		t.Errorf("RangeOf found a range for an outside address")
	}
	// 256 - network - broadcast - gateway - the /26.
	if size := cfg.Pool(cfg.Ranges[1], nil).Size(); size.Int64() != 189 {
		t.Errorf("100.64.1.0/24 has %s allocatable addresses, want 189", size)
	}
	// Canonical output parses back to the same configuration.
	raw, err := json.Marshal(cfg.Canonical())
	if err != nil {
		t.Fatal(err)
	}
	again, err := ipam.ParseIPAM(raw)
	if err != nil {
		t.Fatalf("canonical form %s does not parse: %v", raw, err)
	}
	if !slices.Equal(again.Ranges, cfg.Ranges) || !slices.Equal(again.Exclude, cfg.Exclude) || !slices.Equal(again.ServiceCIDRs, cfg.ServiceCIDRs) || again.DataDir != cfg.DataDir {
		t.Errorf("canonical round trip changed the configuration: %s", raw)
	}
}

func TestParseConfigDefaultsAndFamilies(t *testing.T) {
	cfg, err := ipam.ParseConfig(netconf("k8s-pod-network.v1_x", `{"ranges":[{"subnet":"fd00:1::/120"},{"subnet":"10.0.0.0/30"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != ipam.DefaultDataDir {
		t.Errorf("dataDir %q", cfg.DataDir)
	}
	if got := cfg.ActiveFamilies(); !slices.Equal(got, []int{6, 4}) {
		t.Errorf("families %v, want [6 4] (order of first appearance)", got)
	}
	if cfg.Ranges[1].Gateway != netip.MustParseAddr("10.0.0.1") || cfg.Ranges[0].Gateway != netip.MustParseAddr("fd00:1::1") {
		t.Errorf("default gateways %v %v", cfg.Ranges[0].Gateway, cfg.Ranges[1].Gateway)
	}
	// A v6 gateway may be the last address: there is no broadcast.
	if _, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"fd00::/120","gateway":"fd00::ff"}]}`)); err != nil {
		t.Errorf("v6 gateway at the end of the range refused: %v", err)
	}
	// A /30 has exactly one allocatable address; a /126 two.
	if _, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"10.0.0.4/30"},{"subnet":"fd00::/126"}]}`)); err != nil {
		t.Errorf("smallest ranges refused: %v", err)
	}
}

func TestParseConfigDraining(t *testing.T) {
	// A draining range holds existing allocations only: it may have nothing
	// allocatable left, and a configuration may drain every range.
	cfg, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/30","draining":true}],"exclude":["10.0.0.0/24"]}`))
	if err != nil {
		t.Fatalf("fully excluded draining range refused: %v", err)
	}
	if fams := cfg.ActiveFamilies(); len(fams) != 0 {
		t.Errorf("active families %v with every range draining", fams)
	}
	cfg, err = ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"10.244.0.0/24","draining":true},{"subnet":"fd00::/64","draining":true},{"subnet":"100.64.0.0/24"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if fams := cfg.ActiveFamilies(); !slices.Equal(fams, []int{4}) {
		t.Errorf("active families %v, want [4]", fams)
	}
}

func TestParseConfigRefusesMappedExclude(t *testing.T) {
	_, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/29"}],"exclude":["::ffff:10.0.0.4"]}`))
	if err == nil || !strings.Contains(err.Error(), "::ffff:10.0.0.4") {
		t.Errorf("IPv4-mapped exclude: %v, want an error naming it", err)
	}
}

func TestParseConfigSingleIPExcludes(t *testing.T) {
	cfg, err := ipam.ParseConfig(netconf("pods", `{"ranges":[{"subnet":"10.0.0.0/29"},{"subnet":"fd00::/125"}],"exclude":["10.0.0.2","10.0.0.3/32","fd00::2","10.0.0.4"]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("10.0.0.3/32"), netip.MustParsePrefix("fd00::2/128"), netip.MustParsePrefix("10.0.0.4/32")}
	if !slices.Equal(cfg.Exclude, want) {
		t.Errorf("exclude %v, want %v", cfg.Exclude, want)
	}
	p := cfg.Pool(cfg.Ranges[0], nil)
	var got []netip.Addr
	p.After(netip.Addr{}, func(a netip.Addr) bool { got = append(got, a); return true })
	if want := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")}; !slices.Equal(got, want) {
		t.Errorf("allocatable %v, want %v", got, want)
	}
}

func TestParseConfigKeepsRuntimeKeys(t *testing.T) {
	in := []byte(`{"cniVersion":"1.1.0","name":"pods","type":"bridge",
		"ipam":{"type":"podwall-ipam","ranges":[{"subnet":"10.0.0.0/24"}]},
		"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
		"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24"}]},
		"runtimeConfig":{"portMappings":[]},"args":{"foo":"bar"}}`)
	cfg, err := ipam.ParseConfig(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.ValidAttachments) != 1 || cfg.ValidAttachments[0].ContainerID != "c1" || cfg.ValidAttachments[0].IfName != "eth0" {
		t.Errorf("valid attachments %+v", cfg.ValidAttachments)
	}
	if !strings.Contains(string(cfg.PrevResult), "10.0.0.2/24") {
		t.Errorf("prevResult %s", cfg.PrevResult)
	}
}
