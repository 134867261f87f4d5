package enforcementtest

import (
	"context"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// hostPort traffic (portmap after podwall) reaches the pod with its real
// source and is judged by the pod's ingress.
func TestHostPortIsIngress(t *testing.T) {
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	portmap := []byte(`{"type":"portmap","capabilities":{"portMappings":true}}`)
	nw := node.Network(t, harness.BridgeConflist(netName, "cni0", ipamConf(node, "100.64.58.0/24"),
		harness.WithChained(podwallConf(node), portmap)))
	e := &env{t: t, node: node, nw: nw, layout: "bridge", podwall: podwallConf(node)}

	b := node.NewPod(t, "x", "b")
	b.ServeTCP(t, 8080)
	rt := b.RuntimeConf()
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}}}
	if _, err := nw.CNI.AddNetworkList(ctxFor(t, time.Minute), nw.Config, rt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := nw.CNI.DelNetworkList(ctx, nw.Config, rt); err != nil {
			t.Errorf("DEL b: %v", err)
		}
	})

	outside := node.Network(t, harness.PTPConflist("outside", harness.HostLocalIPAM(node.Dir+"/outside", "100.64.158.0/24")))
	ext := node.NewPod(t, "y", "ext")
	res, err := outside.Add(ctxFor(t, time.Minute), ext)
	if err != nil {
		t.Fatal(err)
	}
	extIP := firstV4(t, res)
	// The pod network has no default route here; the way back to ext:
	b.MustRun(t, "ip", "route", "add", "100.64.158.0/24", "via", "100.64.58.1")
	target := "100.64.158.1:30080" // the node, as ext sees it
	denied(t, ext, target)
	// Allowing ext's own address (not the node's) opens it: the source
	// was preserved.
	e.node.MustRun(t, "iptables", "-w", "-I", "PODWALL-IN-"+key(b), "1", "-s", extIP.String(), "-j", "RETURN")
	reaches(t, ext, target, "x/b")
}
