package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/nodecidrs"
	"github.com/podwall/podwall/ipam/report"
)

// "node" ranges are checked as the plugin hands them out: with the podCIDRs
// the agent wrote; without them, check says why it cannot judge.
func TestCheckNodeRanges(t *testing.T) {
	dir := t.TempDir()
	podCIDRs := filepath.Join(dir, "node-podcidrs.json")
	conflist := writeFile(t, filepath.Join(dir, "10-podnet.conflist"), `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
	{"type": "bridge", "bridge": "cni0", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "node"}],
		"serviceCIDRs": ["10.96.0.0/12"], "nodeCIDRsFile": "`+podCIDRs+`"}}]}`)

	r := runWithRoutes(nil, "ipam", "check", "--config", conflist)
	if r.code != exitFailed || !strings.Contains(r.stderr, podCIDRs) || !strings.Contains(r.stderr, "CNI error code 11") {
		t.Errorf("without the file: exit %d, stderr %q; want 1 naming the file and code 11", r.code, r.stderr)
	}

	if err := writePodCIDRs(podCIDRs, "10.244.3.0/24", "fd00:10:244:3::/64"); err != nil {
		t.Fatal(err)
	}
	r = runWithRoutes([]ipam.NodeRoute{nodeRoute("10.244.3.128/25", "wireguard", "wg0")}, "ipam", "check", "--config", conflist)
	lines := strings.Split(r.stdout, "\n")
	for _, want := range []string{
		"CONFLICT active range 10.244.3.0/24 overlaps route 10.244.3.128/25 dev wg0 (128 addresses unusable)",
		"ok range fd00:10:244:3::/64 (active, a podCIDR of the Node): 18446744073709551614 allocatable addresses",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in\n%s%s", want, r.stdout, r.stderr)
		}
	}
	if r.code != exitFailed {
		t.Errorf("exit %d, want 1 (conflict)", r.code)
	}

	if err := writePodCIDRs(podCIDRs, "10.100.0.0/24"); err != nil {
		t.Fatal(err)
	}
	r = runWithRoutes(nil, "ipam", "check", "--config", conflist)
	if r.code != exitFailed || !strings.Contains(r.stderr, "range 10.100.0.0/24 (a podCIDR of the Node) overlaps service CIDR 10.96.0.0/12") {
		t.Errorf("podCIDR in the service range: exit %d, stderr %q", r.code, r.stderr)
	}
}

// writePodCIDRs writes the Node's podCIDRs as the agent does (contract:
// {"node":NAME,"podCIDRs":[...]}, replaced in one rename).
func writePodCIDRs(path string, cidrs ...string) error {
	data, err := json.Marshal(map[string]any{"node": "node-a", "podCIDRs": cidrs})
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// list classifies addresses against the podCIDRs of a "node" config, from the
// snapshot an ADD wrote (ranges in effect) or from --config.
func TestListNodeRanges(t *testing.T) {
	dir := t.TempDir()
	podCIDRs := filepath.Join(dir, "node-podcidrs.json")
	if err := writePodCIDRs(podCIDRs, "10.244.3.0/24"); err != nil {
		t.Fatal(err)
	}
	section := `{"type": "podwall-ipam", "ranges": [{"subnet": "node"}], "nodeCIDRsFile": "` + podCIDRs + `"}`
	cfg, err := nodecidrs.Resolve(parseConfig(t, "podnet", section))
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "ipam")
	recs := allocate(t, dataDir, cfg, "c1")
	ip := recs[0].Allocations[0].Address.Addr().String()

	r := runWithRoutes(nil, "ipam", "list", "--data-dir", dataDir, "-o", "json")
	if got := decodeListing(t, r.stdout).stateOf(ip); r.code != exitOK || got != report.StateActive {
		t.Errorf("from the snapshot: %s is %q (exit %d, %s)", ip, got, r.code, r.stderr)
	}
	// The Node got a new podCIDR: the old address is in no range any more.
	if err := writePodCIDRs(podCIDRs, "10.244.9.0/24"); err != nil {
		t.Fatal(err)
	}
	conflist := writeFile(t, filepath.Join(dir, "10-podnet.conflist"), `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
		{"type": "bridge", "ipam": `+section+`}]}`)
	r = runWithRoutes(nil, "ipam", "list", "--data-dir", dataDir, "--config", conflist, "-o", "json")
	if got := decodeListing(t, r.stdout).stateOf(ip); r.code != exitOK || got != report.StateUnknownRange {
		t.Errorf("with --config: %s is %q (exit %d, %s)", ip, got, r.code, r.stderr)
	}
	if err := os.Remove(podCIDRs); err != nil {
		t.Fatal(err)
	}
	r = runWithRoutes(nil, "ipam", "list", "--data-dir", dataDir, "--config", conflist)
	if r.code != exitFailed || !strings.Contains(r.stderr, podCIDRs) {
		t.Errorf("--config without the podCIDRs file: exit %d, stderr %q", r.code, r.stderr)
	}
}
