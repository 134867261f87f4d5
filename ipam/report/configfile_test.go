package report

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const ipamSection = `{"type": "podwall-ipam",
 "ranges": [{"subnet": "10.244.1.0/24", "draining": true},
            {"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"},
            {"subnet": "fd00:64:1::/64"}],
 "exclude": ["100.64.1.128/26"],
 "serviceCIDRs": ["10.96.0.0/12"],
 "dataDir": "/var/lib/podwall/ipam"}`

func TestLoadConfigShapes(t *testing.T) {
	tests := []struct {
		name        string
		doc         string
		wantShape   Shape
		wantNetwork string
	}{
		{
			name:      "bare ipam section",
			doc:       ipamSection,
			wantShape: ShapeIPAM,
		},
		{
			name:      "bare ipam section without type",
			doc:       `{"ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"}, {"subnet": "fd00:64:1::/64"}]}`,
			wantShape: ShapeIPAM,
		},
		{
			name:        "netconf",
			doc:         `{"cniVersion": "1.1.0", "name": "podnet", "type": "bridge", "bridge": "cni0", "isGateway": true, "ipam": ` + ipamSection + `}`,
			wantShape:   ShapeNetconf,
			wantNetwork: "podnet",
		},
		{
			name: "conflist",
			doc: `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
				{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipam": ` + ipamSection + `},
				{"type": "portmap", "capabilities": {"portMappings": true}},
				{"type": "podwall"}]}`,
			wantShape:   ShapeConflist,
			wantNetwork: "podnet",
		},
		{
			name: "conflist whose first plugin uses another ipam",
			doc: `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
				{"type": "macvlan", "ipam": {"type": "host-local", "subnet": "192.168.0.0/24"}},
				{"type": "ptp", "ipam": ` + ipamSection + `}]}`,
			wantShape:   ShapeConflist,
			wantNetwork: "podnet",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadConfig([]byte(tc.doc))
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if got.Shape != tc.wantShape || got.Network != tc.wantNetwork {
				t.Errorf("got shape %v network %q, want %v %q", got.Shape, got.Network, tc.wantShape, tc.wantNetwork)
			}
			cfg := got.Config
			if cfg.Network != tc.wantNetwork {
				t.Errorf("Config.Network = %q, want %q", cfg.Network, tc.wantNetwork)
			}
			if len(cfg.Ranges) != 3 || !cfg.Ranges[0].Draining || cfg.Ranges[1].Subnet != netip.MustParsePrefix("100.64.1.0/24") {
				t.Errorf("ranges not parsed as configured: %+v", cfg.Ranges)
			}
		})
	}
}

func TestLoadConfigConflistPassesVersion(t *testing.T) {
	got, err := LoadConfig([]byte(`{"cniVersion": "1.0.0", "name": "n1", "plugins": [{"type": "bridge", "ipam": ` + ipamSection + `}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got.Config.CNIVersion != "1.0.0" {
		t.Errorf("CNIVersion = %q, want the list's 1.0.0", got.Config.CNIVersion)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name     string
		doc      string
		wantCode uint
		wantMsg  string
	}{
		{"not json", `{"ranges": [`, types.ErrDecodingFailure, "cannot decode configuration"},
		{"overlapping ranges", `{"ranges": [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/16"}]}`,
			types.ErrInvalidNetworkConfig, "range 10.0.0.0/16 overlaps range 10.0.0.0/24"},
		{"range in service CIDR, in a netconf", `{"name": "n", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.96.0.0/24"}], "serviceCIDRs": ["10.96.0.0/12"]}}`,
			types.ErrInvalidNetworkConfig, "range 10.96.0.0/24 overlaps service CIDR 10.96.0.0/12"},
		{"invalid CIDR, in a conflist", `{"name": "n", "plugins": [{"type": "bridge", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.0.0.300/24"}]}}]}`,
			types.ErrInvalidNetworkConfig, `invalid CIDR "10.0.0.300/24"`},
		{"misspelt key", `{"type": "podwall-ipam", "ranges": [{"subnet": "10.0.0.0/24"}], "serviceCIDR": ["10.96.0.0/12"]}`,
			types.ErrUnsupportedField, "serviceCIDR"},
		{"conflist without podwall-ipam", `{"name": "n", "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]}`,
			types.ErrInvalidNetworkConfig, "no plugin whose ipam type is podwall-ipam"},
		{"conflist with two podwall-ipam", `{"name": "n", "plugins": [{"type": "bridge", "ipam": ` + ipamSection + `}, {"type": "ptp", "ipam": ` + ipamSection + `}]}`,
			types.ErrInvalidNetworkConfig, "2 plugins"},
		{"netconf with another ipam", `{"name": "n", "type": "bridge", "ipam": {"type": "host-local", "ranges": []}}`,
			types.ErrInvalidNetworkConfig, `ipam type is "host-local"`},
		{"bare section of another ipam", `{"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}`,
			types.ErrInvalidNetworkConfig, `ipam type is "host-local"`},
		{"netconf with a bad network name", `{"name": "../etc", "ipam": ` + ipamSection + `}`,
			types.ErrInvalidNetworkConfig, "invalid network name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig([]byte(tc.doc))
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("got %v, want a *types.Error", err)
			}
			if cniErr.Code != tc.wantCode || !strings.Contains(cniErr.Msg, tc.wantMsg) {
				t.Errorf("got code %d %q, want code %d containing %q", cniErr.Code, cniErr.Msg, tc.wantCode, tc.wantMsg)
			}
		})
	}
}
