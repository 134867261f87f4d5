// Package demo is the end-to-end demonstration behind `make demo`: a node and
// its pods as network namespaces on this machine, the real CNI chain driven
// through libcni, and what an admin sees with podwallctl. It runs in the test
// suite as well, so the demo's claims are checked on every change.
package demo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// say prints narration to stdout (shown by `make demo`, which runs with -v).
func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func ipamSection(t *testing.T, dataDir string, ranges string) []byte {
	t.Helper()
	return []byte(fmt.Sprintf(`{"type":"podwall-ipam","dataDir":%q,"ranges":%s,"exclude":["100.64.0.100/30"],"serviceCIDRs":["10.96.0.0/12"]}`, dataDir, ranges))
}

func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	podwallctl := filepath.Join(bin, "podwallctl")
	node := harness.NewNode(t)
	dataDir := filepath.Join(node.Dir, "ipam")
	confPath := filepath.Join(node.Dir, "10-podnet.conflist")
	if err := node.AddUplink("corp0", "192.168.50.2/24"); err != nil {
		t.Fatal(err)
	}

	say("== podwall demo: a node (network namespace %s) with pods behind bridge + podwall-ipam", filepath.Base(node.Path()))
	oldRanges := `[{"subnet":"100.64.0.0/24"},{"subnet":"fd00:64::/64"}]`
	conflist := harness.BridgeConflist("podnet", "cni0", ipamSection(t, dataDir, oldRanges))
	writeFile(t, confPath, conflist)
	say("conflist:\n%s\n", conflist)
	nw := node.Network(t, conflist)

	var pods []*harness.Pod
	attach := func(nw *harness.Network, namespace, name string) netip.Addr {
		pod := node.NewPod(t, namespace, name)
		res, err := nw.Add(ctx, pod)
		if err != nil {
			t.Fatalf("ADD %s/%s: %v", namespace, name, err)
		}
		ips, err := harness.ResultIPs(res)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, pod)
		var shown []string
		for _, ip := range ips {
			shown = append(shown, ip.String())
		}
		say("  pod %-22s %s", namespace+"/"+name, strings.Join(shown, "  "))
		return ips[0].Addr()
	}
	say("== 1. three pods are created")
	for _, p := range [][2]string{{"frontend", "web"}, {"backend", "api"}, {"db", "postgres"}} {
		attach(nw, p[0], p[1])
	}

	corporate := netip.MustParsePrefix("100.64.0.0/26")
	say("\n== 2. the network team announces the corporate servers at %s; the node gets a route", corporate)
	if err := node.AddRoute(corporate.String(), "via", "192.168.50.1"); err != nil {
		t.Fatal(err)
	}
	say("$ ip route  (in the node)\n%s", indent(node.MustRun(t, "ip", "route")))
	out, code := runCtl(t, node, podwallctl, "ipam", "check", "--config", confPath)
	say("$ podwallctl ipam check --config %s   (exit %d)\n%s", filepath.Base(confPath), code, indent(out))
	if code != 1 {
		t.Errorf("ipam check exited %d with an active range overlapping a route, want 1", code)
	}

	say("== 3. new pods avoid the route at once, with no restart")
	for _, name := range []string{"worker-1", "worker-2"} {
		if ip := attach(nw, "backend", name); corporate.Contains(ip) {
			t.Errorf("%s got %s inside the corporate route %s", name, ip, corporate)
		}
	}

	newRange := netip.MustParsePrefix("100.65.0.0/24")
	say("\n== 4. migration: add %s, mark the old range draining (config change only)", newRange)
	newRanges := `[{"subnet":"100.64.0.0/24","draining":true},{"subnet":"fd00:64::/64","draining":true},{"subnet":"100.65.0.0/24"},{"subnet":"fd00:65::/64"}]`
	// The reference bridge takes one gateway per family: the new ranges
	// come with a new bridge, and the old one stays for the old pods.
	conflist = harness.BridgeConflist("podnet", "cni1", ipamSection(t, dataDir, newRanges))
	writeFile(t, confPath, conflist)
	nw2 := node.Network(t, conflist)
	out, code = runCtl(t, node, podwallctl, "ipam", "check", "--config", confPath)
	say("$ podwallctl ipam check   (exit %d)\n%s", code, indent(out))
	if code != 0 {
		t.Errorf("ipam check exited %d once the colliding range is draining, want 0", code)
	}
	for _, name := range []string{"web-v2", "api-v2"} {
		if ip := attach(nw2, "frontend", name); !newRange.Contains(ip) {
			t.Errorf("%s got %s outside the new range %s", name, ip, newRange)
		}
	}
	out, _ = runCtl(t, node, podwallctl, "ipam", "list", "--data-dir", dataDir)
	say("$ podwallctl ipam list --data-dir %s\n%s", dataDir, indent(out))

	say("== 5. the old pods keep working (TCP, backend/api -> frontend/web)")
	pods[0].ServeTCP(t, 8080)
	res, err := nw.CachedResult(pods[0])
	if err != nil {
		t.Fatal(err)
	}
	ips, _ := harness.ResultIPs(res)
	reply, err := pods[1].ConnectTCP(ctx, netip.AddrPortFrom(ips[0].Addr(), 8080).String())
	say("  api -> %s:8080: %q %v", ips[0].Addr(), reply, errString(err))
	if err != nil {
		t.Errorf("connect: %v", err)
	}

	say("\n== 6. clean up: every pod deleted through CNI DEL")
	for i, pod := range pods {
		n := nw
		if i >= 5 {
			n = nw2
		}
		if err := n.Del(ctx, pod); err != nil {
			t.Errorf("DEL %s: %v", pod.Name, err)
		}
	}
	out, _ = runCtl(t, node, podwallctl, "ipam", "list", "--data-dir", dataDir)
	say("$ podwallctl ipam list\n%s", indent(out))
	say("== done; the node namespace and all pods are removed when the demo ends")
}

func runCtl(t *testing.T, node *harness.Node, podwallctl string, args ...string) (string, int) {
	t.Helper()
	out, err := node.Run(append([]string{podwallctl}, args...)...)
	if err == nil {
		return out, 0
	}
	var code = -1
	if ee, ok := asExit(err); ok {
		code = ee
	} else {
		t.Fatalf("podwallctl %v: %v", args, err)
	}
	return out + "\n" + err.Error(), code
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "    " + strings.Join(lines, "\n    ") + "\n"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func asExit(err error) (int, bool) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, false
}
