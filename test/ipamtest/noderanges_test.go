package ipamtest

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podwall/podwall/test/harness"
)

// {"subnet": "node"} through bridge and libcni: no address until the agent
// wrote the Node's podCIDRs (code 11, naming the file), then addresses from
// them, one per family, still avoiding a foreign route; DEL, CHECK and GC
// never need the file.
func TestNodeRanges(t *testing.T) {
	node := harness.NewNode(t)
	podCIDRs := node.Dir + "/node-podcidrs.json"
	dataDir := node.Dir + "/ipam"
	section := []byte(`{"type":"podwall-ipam","ranges":[{"subnet":"node"}],"dataDir":"` + dataDir + `","nodeCIDRsFile":"` + podCIDRs + `"}`)
	nw := node.Network(t, harness.BridgeConflist("podnet", "cni0", section))
	ctx := ctxFor(t, 2*time.Minute)

	early := node.NewPod(t, "default", "early")
	_, err := nw.Add(ctx, early)
	if code := cniCode(err); code != 11 || !strings.Contains(err.Error(), podCIDRs) || !strings.Contains(err.Error(), "agent has not written") {
		t.Fatalf("ADD before the agent wrote the podCIDRs: %v (code %d), want code 11 naming %s", err, code, podCIDRs)
	}
	if err := nw.Del(ctx, early); err != nil {
		t.Errorf("DEL without the podCIDRs file: %v", err)
	}
	if err := nw.Status(ctx); cniCode(err) != 50 {
		t.Errorf("STATUS without the podCIDRs file: %v, want code 50", err)
	}

	// A foreign route over the top half of the v4 podCIDR.
	if err := node.AddUplink("corp0", "192.0.2.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := node.AddRoute("100.64.40.0/25", "via", "192.0.2.254"); err != nil {
		t.Fatal(err)
	}
	if err := writePodCIDRs(podCIDRs, "100.64.40.0/24", "fd00:64:40::/64"); err != nil {
		t.Fatal(err)
	}
	pods, ips := addAll(t, node, nw, "p", 4, 0)
	v4 := netip.MustParsePrefix("100.64.40.128/25")
	v6 := netip.MustParsePrefix("fd00:64:40::/64")
	for i, got := range ips {
		if len(got) != 2 || !v4.Contains(got[0].Addr()) || got[0].Bits() != 24 || !v6.Contains(got[1].Addr()) {
			t.Errorf("pod %d got %v, want one address of 100.64.40.128/25 (outside the foreign route) and one of %s", i, got, v6)
		}
	}
	res, err := nw.CachedResult(pods[0])
	if err != nil {
		t.Fatal(err)
	}
	if s := resultGateways(t, res); s != "100.64.40.1 fd00:64:40::1" {
		t.Errorf("gateways %q, want the first address of each podCIDR", s)
	}

	// Without the file, CHECK, DEL and GC still work by container.
	if err := os.Remove(podCIDRs); err != nil {
		t.Fatal(err)
	}
	if err := nw.Check(ctx, pods[0]); err != nil {
		t.Errorf("CHECK without the podCIDRs file: %v", err)
	}
	if err := nw.Del(ctx, pods[1]); err != nil {
		t.Errorf("DEL without the podCIDRs file: %v", err)
	}
	gc, err := harness.InjectJSON(harness.IPAMStdin("podnet", "1.1.0", section), "cni.dev/valid-attachments", harness.ValidAttachments(pods[0]))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := node.InvokePlugin(ctx, "podwall-ipam", "GC", nil, gc); err != nil {
		t.Errorf("GC without the podCIDRs file: %v\n%s", err, out)
	}
	if got := reservations(t, dataDir, "podnet"); len(got) != 2 {
		t.Errorf("after GC keeping one pod: reservations %v, want its two addresses", got)
	}
	// A garbage file is refused loudly (7), not retried.
	if err := os.WriteFile(podCIDRs, []byte(`{"podCIDRs":["100.64.40.0/33"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	late := node.NewPod(t, "default", "late")
	if _, err := nw.Add(ctx, late); cniCode(err) != 7 || !strings.Contains(err.Error(), "100.64.40.0/33") {
		t.Errorf("ADD with a garbage podCIDRs file: %v, want code 7 naming the bad CIDR", err)
	}
}

// resultGateways lists the gateways of a result, space-separated.
func resultGateways(t *testing.T, res types.Result) string {
	t.Helper()
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var gws []string
	for _, ipc := range r.IPs {
		gws = append(gws, ipc.Gateway.String())
	}
	return strings.Join(gws, " ")
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
