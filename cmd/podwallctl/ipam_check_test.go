package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
)

const checkConflist = `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
	{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipam": {"type": "podwall-ipam",
		"ranges": [{"subnet": "10.244.1.0/24", "draining": true},
		           {"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"},
		           {"subnet": "fd00:64:1::/64"}],
		"exclude": ["100.64.1.128/26"],
		"serviceCIDRs": ["10.96.0.0/12"]}},
	{"type": "portmap", "capabilities": {"portMappings": true}}]}`

func TestCheckWithFakeRoutes(t *testing.T) {
	conflist := writeFile(t, filepath.Join(t.TempDir(), "10-podnet.conflist"), checkConflist)
	tests := []struct {
		name      string
		routes    []ipam.NodeRoute
		wantCode  int
		wantLines []string
	}{
		{
			name:     "clean node",
			routes:   []ipam.NodeRoute{nodeRoute("0.0.0.0/0", "ether", "eth0"), nodeRoute("100.64.1.0/24", "bridge", "cni0")},
			wantCode: exitOK,
			wantLines: []string{
				`info conflist ` + conflist + `: network "podnet", 3 ranges`,
				"info route 100.64.1.0/24 dev cni0 is the pod network's own (bridge of range 100.64.1.0/24)",
				"info active range 100.64.1.0/24 overlaps exclusion 100.64.1.128/26 (64 addresses excluded)",
				"ok range 100.64.1.0/24 (active): 189 allocatable addresses",
				"summary: 0 conflicts, 0 warnings",
			},
		},
		{
			name:     "foreign route in the active range",
			routes:   []ipam.NodeRoute{nodeRoute("100.64.1.0/24", "bridge", "cni0"), nodeRoute("100.64.1.64/28", "dummy", "br-up")},
			wantCode: exitFailed,
			wantLines: []string{
				"CONFLICT active range 100.64.1.0/24 overlaps route 100.64.1.64/28 dev br-up (16 addresses unusable)",
				"info range 100.64.1.0/24 (active): 173 allocatable addresses (16 more are inside foreign routes)",
				"summary: 1 conflict, 0 warnings",
			},
		},
		{
			name:     "foreign route in the draining range only",
			routes:   []ipam.NodeRoute{nodeRoute("10.244.0.0/16", "wireguard", "wg0")},
			wantCode: exitOK,
			wantLines: []string{
				"warning draining range 10.244.1.0/24 overlaps route 10.244.0.0/16 dev wg0 (256 addresses, including gateway 10.244.1.1; pods still holding them cannot reach what is behind the route)",
				"summary: 0 conflicts, 1 warning",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runWithRoutes(tc.routes, "ipam", "check", "--config", conflist)
			if r.code != tc.wantCode {
				t.Errorf("exit %d, want %d\n%s%s", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			lines := strings.Split(r.stdout, "\n")
			for _, want := range tc.wantLines {
				if !slices.Contains(lines, want) {
					t.Errorf("no line %q in\n%s", want, r.stdout)
				}
			}
		})
	}
}

func TestCheckInvalidConfigs(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, doc, wantStderr string }{
		{"overlapping ranges in a bare section", `{"type": "podwall-ipam", "ranges": [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]}`,
			"range 10.0.0.128/25 overlaps range 10.0.0.0/24 (CNI error code 7)"},
		{"range in service CIDR in a netconf", `{"cniVersion": "1.1.0", "name": "n", "type": "bridge", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.96.5.0/24"}], "serviceCIDRs": ["10.96.0.0/12"]}}`,
			"range 10.96.5.0/24 overlaps service CIDR 10.96.0.0/12 (CNI error code 7)"},
		{"fully excluded range in a conflist", `{"name": "n", "plugins": [{"type": "ptp", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.1.0.0/30"}], "exclude": ["10.1.0.2"]}}]}`,
			"range 10.1.0.0/30 has no allocatable address left after exclusions (CNI error code 7)"},
		{"not JSON", `ranges: [10.0.0.0/8]`, "cannot decode configuration"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, filepath.Join(dir, "c"+string(rune('a'+i))), tc.doc)
			r := runWithRoutes(nil, "ipam", "check", "--config", file)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.wantStderr) || r.stdout != "" {
				t.Errorf("exit %d\nstdout: %s\nstderr: %s\nwant exit 2 and %q", r.code, r.stdout, r.stderr, tc.wantStderr)
			}
		})
	}
}
