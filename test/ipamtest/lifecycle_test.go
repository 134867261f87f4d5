package ipamtest

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// A /27 holds 29 pod addresses (less network, broadcast and gateway). Fill
// it, see the 30th refused with the exhaustion code, release with DEL and
// with GC, and fill it again each time.
func TestExhaustReleaseAndGC(t *testing.T) {
	node := harness.NewNode(t)
	dataDir := node.Dir + "/ipam"
	conf := ipamConf{Ranges: []rangeConf{{Subnet: "100.64.16.0/27"}}, DataDir: dataDir}
	nw := node.Network(t, harness.BridgeConflist("podnet", "cni0", conf.JSON(t)))
	ctx := ctxFor(t, 5*time.Minute)

	pods, first := addAll(t, node, nw, "a", 29, 8)
	if err := nw.Status(ctx); err == nil {
		t.Error("STATUS succeeded on an exhausted range")
	} else if code := cniCode(err); code != 50 {
		t.Errorf("STATUS on an exhausted range: code %d (%v), want 50", code, err)
	}
	extra := node.NewPod(t, "default", "extra")
	_, err := nw.Add(ctx, extra)
	if code := cniCode(err); code != 100 || !strings.Contains(err.Error(), "100.64.16.0/27 exhausted: 29 of 29 in use") {
		t.Fatalf("30th ADD: code %d, error %v; want code 100 naming the range", code, err)
	}
	if err := nw.Del(ctx, extra); err != nil {
		t.Fatalf("DEL after failed ADD: %v", err)
	}

	delAll(t, nw, pods)
	if err := nw.Status(ctx); err != nil {
		t.Errorf("STATUS after DEL: %v", err)
	}
	pods, second := addAll(t, node, nw, "b", 29, 8)
	if !sameAddrs(first, second) {
		t.Errorf("after DEL the range did not fill again with the same 29 addresses")
	}

	// GC keeps the first ten and releases the rest. The reference bridge
	// does not delegate GC to its IPAM plugin, so it is invoked directly,
	// as a delegating main plugin would.
	valid := harness.ValidAttachments(pods[:10]...)
	stdin, err := harness.InjectJSON(harness.IPAMStdin("podnet", "1.1.0", conf.JSON(t)), "cni.dev/valid-attachments", valid)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := node.InvokePlugin(ctx, "podwall-ipam", "GC", nil, stdin); err != nil {
		t.Fatalf("GC: %v\n%s", err, out)
	}
	if n := len(reservations(t, dataDir, "podnet")); n != 10 {
		t.Errorf("after GC %d reservations remain, want 10", n)
	}
	for _, pod := range pods[:10] {
		if err := nw.Check(ctx, pod); err != nil {
			t.Errorf("CHECK of a pod GC kept: %v", err)
		}
	}
	// The released pods' interfaces still exist; remove them without
	// touching the store, then refill.
	for _, pod := range pods[10:] {
		if err := nw.Del(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	addAll(t, node, nw, "c", 19, 8)
}

func sameAddrs(a, b [][]netip.Prefix) bool {
	set := map[netip.Prefix]bool{}
	for _, ips := range a {
		for _, p := range ips {
			set[p] = true
		}
	}
	n := 0
	for _, ips := range b {
		for _, p := range ips {
			if !set[p] {
				return false
			}
			n++
		}
	}
	return n == len(set)
}

// A retried ADD for the same (containerID, ifname) gets the same addresses;
// DEL is idempotent, and works on an unknown container and without a netns.
func TestIdempotence(t *testing.T) {
	node := harness.NewNode(t)
	dataDir := node.Dir + "/ipam"
	conf := ipamConf{Ranges: []rangeConf{{Subnet: "100.64.17.0/24"}, {Subnet: "fd00:64:17::/64"}}, DataDir: dataDir}
	stdin := harness.IPAMStdin("podnet", "1.1.0", conf.JSON(t))
	ctx := ctxFor(t, time.Minute)
	pod := node.NewPod(t, "default", "web")
	other := node.NewPod(t, "default", "other")

	first := invokeIPs(t, ctx, node, "ADD", pod, stdin)
	invokeIPs(t, ctx, node, "ADD", other, stdin)
	again := invokeIPs(t, ctx, node, "ADD", pod, stdin)
	if len(first) != 2 || !equalPrefixes(first, again) {
		t.Fatalf("first ADD %v, retried ADD %v", first, again)
	}
	for i := 0; i < 2; i++ {
		if out, err := node.InvokePlugin(ctx, "podwall-ipam", "DEL", pod, stdin); err != nil {
			t.Fatalf("DEL #%d: %v\n%s", i+1, err, out)
		}
	}
	if err := pod.Remove(); err != nil {
		t.Fatal(err)
	}
	// DEL with a netns that no longer exists, for an unknown container.
	if out, err := node.InvokePlugin(ctx, "podwall-ipam", "DEL", pod, stdin); err != nil {
		t.Fatalf("DEL after the netns is gone: %v\n%s", err, out)
	}
	if n := len(reservations(t, dataDir, "podnet")); n != 2 {
		t.Errorf("%d reservations, want the other pod's 2", n)
	}
}

func invokeIPs(t *testing.T, ctx context.Context, node *harness.Node, cmd string, pod *harness.Pod, stdin []byte) []netip.Prefix {
	t.Helper()
	out, err := node.InvokePlugin(ctx, "podwall-ipam", cmd, pod, stdin)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("decoding %s result %s: %v", cmd, out, err)
	}
	var ips []netip.Prefix
	for _, ip := range res.IPs {
		ips = append(ips, netip.MustParsePrefix(ip.Address))
	}
	return ips
}

func equalPrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Moving the pod range: with the old range draining, new pods get addresses
// from the new one, and the old pods still pass CHECK and DEL.
func TestDrainingRange(t *testing.T) {
	node := harness.NewNode(t)
	dataDir := node.Dir + "/ipam"
	oldRange, newRange := "10.244.1.0/24", "100.64.18.0/24"
	before := ipamConf{Ranges: []rangeConf{{Subnet: oldRange}}, DataDir: dataDir}
	nw := node.Network(t, harness.BridgeConflist("podnet", "cni0", before.JSON(t)))
	oldPods, oldIPs := addAll(t, node, nw, "old", 5, 0)

	after := ipamConf{Ranges: []rangeConf{{Subnet: oldRange, Draining: true}, {Subnet: newRange}}, DataDir: dataDir}
	// The bridge keeps its old gateway address: a second bridge serves the new range.
	nw2 := node.Network(t, harness.BridgeConflist("podnet", "cni1", after.JSON(t)))
	newPods, newIPs := addAll(t, node, nw2, "new", 5, 0)
	for i, ips := range newIPs {
		if !netip.MustParsePrefix(newRange).Contains(ips[0].Addr()) {
			t.Errorf("new pod %d got %s outside the new range %s", i, ips[0], newRange)
		}
	}
	for i, ips := range oldIPs {
		if !netip.MustParsePrefix(oldRange).Contains(ips[0].Addr()) {
			t.Errorf("old pod %d got %s", i, ips[0])
		}
	}
	ctx := ctxFor(t, time.Minute)
	stdin := harness.IPAMStdin("podnet", "1.1.0", after.JSON(t))
	for _, pod := range oldPods {
		// CHECK against the ADD's cached result, under the new config.
		res, err := nw.CachedResult(pod)
		if err != nil {
			t.Fatal(err)
		}
		withPrev, err := harness.InjectJSON(stdin, "prevResult", res)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := node.InvokePlugin(ctx, "podwall-ipam", "CHECK", pod, withPrev); err != nil {
			t.Errorf("CHECK of %s under the draining config: %v\n%s", pod.Name, err, out)
		}
	}
	// A tampered prevResult fails CHECK.
	res, err := nw2.CachedResult(newPods[0])
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(mustJSON(t, res), "100.64.18.", "100.64.19.", 1)
	withPrev, err := harness.InjectJSON(stdin, "prevResult", json.RawMessage(tampered))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.InvokePlugin(ctx, "podwall-ipam", "CHECK", newPods[0], withPrev); cniCode(err) != 101 {
		t.Errorf("CHECK with a prevResult that differs: %v, want code 101", err)
	}
	if err := nw2.Check(ctx, newPods[0]); err != nil {
		t.Errorf("CHECK through libcni: %v", err)
	}
	for _, pod := range oldPods {
		if err := nw.Del(ctx, pod); err != nil {
			t.Errorf("DEL of an old pod: %v", err)
		}
	}
	if n := len(reservations(t, dataDir, "podnet")); n != 5 {
		t.Errorf("%d reservations after deleting the old pods, want 5", n)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
