package installtest

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/test/harness"
)

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// kernelState is the node's iptables (both families, every table) and ipsets,
// comments and counters left out.
func kernelState(t *testing.T, node *harness.Node) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"ipset", "save"}} {
		out, err := node.Run(cmd...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
			}
		}
	}
	return b.String()
}

// withoutPodwall drops podwall's lines and the table headers, which the
// kernel lists once a table was used.
func withoutPodwall(state string) []string {
	var out []string
	for _, line := range strings.Split(state, "\n") {
		if line == "" || strings.Contains(line, "PODWALL-") || strings.HasPrefix(line, "*") || line == "COMMIT" || strings.HasPrefix(line, ":") && strings.HasSuffix(line, "ACCEPT [0:0]") {
			continue
		}
		out = append(out, line)
	}
	return out
}

// Install into the node's CNI dirs, a real ADD through the chained conflist
// with libcni (plugins found only in the node's CNI bin dir), then
// uninstall while a pod is still attached: the original conflist back byte
// for byte, our binaries gone, every PODWALL- chain and set gone from the
// node (jumps first), and everything else in its tables left as it was.
func TestInstallAddUninstall(t *testing.T) {
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	s := newScratch(t, filepath.Join(node.Dir, "cni"))
	s.reference(t, "10-containerd-net.conflist", "100.64.50.0/24")
	copyReferencePlugins(t, s, "bridge", "host-local", "portmap", "loopback")
	if err := node.AddBridge("cni0"); err != nil {
		t.Fatal(err)
	}
	// Somebody else's rules, chains and sets, which uninstall must keep.
	for _, cmd := range [][]string{
		{"ipset", "create", "other-set", "hash:ip"},
		{"iptables", "-w", "-N", "OTHER-CHAIN"},
		{"iptables", "-w", "-A", "OTHER-CHAIN", "-m", "set", "--match-set", "other-set", "src", "-j", "RETURN"},
		{"iptables", "-w", "-A", "FORWARD", "-m", "comment", "--comment", "someone else", "-j", "OTHER-CHAIN"},
		{"iptables", "-w", "-t", "nat", "-N", "OTHER-NAT"},
		{"ip6tables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"},
	} {
		node.MustRun(t, cmd...)
	}
	confBefore := tree(t, false, s.confDir, s.binDir)
	kernelBefore := withoutPodwall(kernelState(t, node))

	ctlDir := filepath.Join(node.Dir, "usr-local-bin")
	if r := run(t, node, s.args("--ctl-dir", ctlDir)...); r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	if _, err := os.Stat(filepath.Join(ctlDir, "podwallctl")); err != nil {
		t.Errorf("podwallctl not copied to --ctl-dir: %v", err)
	}
	_, list := activeConflist(t, s.confDir)
	if pluginTypes(list) != "bridge,podwall,portmap" {
		t.Fatalf("chained conflist: %s", pluginTypes(list))
	}
	rt := newRuntime(t, node, s, list)
	pods := []*harness.Pod{node.NewPod(t, "default", "web"), node.NewPod(t, "default", "api")}
	subnet := netip.MustParsePrefix("100.64.50.0/24")
	for _, pod := range pods {
		res, err := rt.add(pod)
		if err != nil {
			t.Fatalf("ADD %s through the chained conflist: %v", pod.Name, err)
		}
		ips, err := harness.ResultIPs(res)
		if err != nil || len(ips) != 1 || !subnet.Contains(ips[0].Addr()) {
			t.Fatalf("ADD %s: %v %v", pod.Name, ips, err)
		}
		if err := rt.check(pod); err != nil {
			t.Errorf("CHECK %s: %v", pod.Name, err)
		}
	}
	state := kernelState(t, node)
	if !strings.Contains(state, ":PODWALL-F-") || !strings.Contains(state, "-A FORWARD -m comment --comment \"podwall: pod traffic\" -j PODWALL-FORWARD") {
		t.Fatalf("podwall chains missing after ADD:\n%s", state)
	}
	if err := rt.del(pods[1]); err != nil {
		t.Errorf("DEL api: %v", err)
	}
	// A set of the agent's, referenced from one of podwall's chains: it can
	// go only once the rule is gone.
	node.MustRun(t, "ipset", "create", "PODWALL-PODS4-test", "hash:ip")
	node.MustRun(t, "iptables", "-w", "-I", "PODWALL-EGRESS", "-m", "set", "--match-set", "PODWALL-PODS4-test", "dst", "-j", "RETURN")

	r := run(t, node, s.args("--uninstall", "--ctl-dir", ctlDir)...)
	if r.code != 0 {
		t.Fatalf("uninstall: %v", r)
	}
	t.Logf("uninstall:\n%s", r.stdout)
	if _, err := os.Stat(filepath.Join(ctlDir, "podwallctl")); err == nil {
		t.Error("podwallctl left in --ctl-dir after uninstall")
	}
	after := kernelState(t, node)
	if strings.Contains(after, "PODWALL-") || strings.Contains(after, "podwall") {
		t.Errorf("podwall left in the kernel after uninstall:\n%s", after)
	}
	if got := withoutPodwall(after); !slices.Equal(got, kernelBefore) {
		t.Errorf("uninstall changed what is not podwall's:\nbefore:\n%s\nafter:\n%s", strings.Join(kernelBefore, "\n"), strings.Join(got, "\n"))
	}
	sameTree(t, "CNI dirs after uninstall", tree(t, false, s.confDir, s.binDir), confBefore)

	// The runtime tears the remaining pod down with the original network.
	_, original := activeConflist(t, s.confDir)
	if err := newRuntime(t, node, s, original).del(pods[0]); err != nil {
		t.Errorf("DEL web through the restored conflist: %v", err)
	}
	delete(rt.attached, pods[0])

	if r := run(t, node, s.args("--uninstall")...); r.code != 0 || !strings.Contains(r.stdout, "nothing to restore") {
		t.Errorf("second uninstall: %v", r)
	}
	sameTree(t, "after a second uninstall", tree(t, false, s.confDir, s.binDir), confBefore)
}

// install.sh --write-conflist with "node" ranges: no address until the agent
// wrote the Node's podCIDRs, then addresses from them, through podwall;
// uninstall removes the conflist and leaves the node's own untouched.
func TestWriteConflistWithNodeRanges(t *testing.T) {
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	s := newScratch(t, filepath.Join(node.Dir, "cni"))
	s.reference(t, "10-containerd-net.conflist", "100.64.51.0/24")
	copyReferencePlugins(t, s, "bridge", "host-local", "portmap", "loopback")
	if err := node.AddBridge("pw0"); err != nil {
		t.Fatal(err)
	}
	confBefore := tree(t, false, s.confDir, s.binDir)
	podCIDRs := filepath.Join(node.Dir, "node-podcidrs.json")
	r := run(t, node, s.args("--write-conflist", "--bridge", "pw0", "--service-cidr", "10.96.0.0/12",
		"--ipam-data-dir", filepath.Join(node.Dir, "ipam"), "--node-cidrs-file", podCIDRs, "--cni-version", "1.1.0")...)
	if r.code != 0 {
		t.Fatalf("install --write-conflist: %v", r)
	}
	file, list := activeConflist(t, s.confDir)
	if filepath.Base(file) != "00-podwall.conflist" || pluginTypes(list) != "bridge,podwall,portmap" || list.CNIVersion != "1.1.0" {
		t.Fatalf("active %s: %s %s", file, pluginTypes(list), list.CNIVersion)
	}
	rt := newRuntime(t, node, s, list)
	early := node.NewPod(t, "default", "early")
	if _, err := rt.add(early); err == nil || !strings.Contains(err.Error(), podCIDRs) {
		t.Errorf("ADD before the podCIDRs were written: %v, want an error naming %s", err, podCIDRs)
	}
	if err := rt.del(early); err != nil {
		t.Errorf("DEL after the failed ADD: %v", err)
	}
	if err := os.WriteFile(podCIDRs, []byte(`{"node":"node-a","podCIDRs":["100.64.52.0/24"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := node.NewPod(t, "default", "web")
	res, err := rt.add(pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ips, _ := harness.ResultIPs(res)
	if len(ips) != 1 || !netip.MustParsePrefix("100.64.52.0/24").Contains(ips[0].Addr()) {
		t.Errorf("pod got %v, want an address of the Node's podCIDR 100.64.52.0/24", ips)
	}
	if err := rt.del(pod); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if r := run(t, node, s.args("--uninstall")...); r.code != 0 {
		t.Fatalf("uninstall: %v", r)
	}
	sameTree(t, "CNI dirs after uninstall", tree(t, false, s.confDir, s.binDir), confBefore)
}
