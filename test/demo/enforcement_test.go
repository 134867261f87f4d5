package demo

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/harness"
)

// demoPod is a pod of the enforcement demo with the port it serves.
type demoPod struct {
	namespace, name string
	port            int
	pod             *harness.Pod
	ip              netip.Addr
}

// TestDemoEnforcement is the second half of `make demo`: pods behind the real
// chain bridge + podwall-ipam + podwall, the agent enforcing the policies of
// examples/, and the connectivity matrix before and after.
func TestDemoEnforcement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	examples, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	node := harness.NewNode(t)
	socket := filepath.Join(node.Dir, "agent.sock")
	policyDir := filepath.Join(node.Dir, "policies")
	if err := os.Mkdir(policyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ipam := fmt.Sprintf(`{"type":"podwall-ipam","dataDir":%q,"ranges":[{"subnet":"100.64.0.0/24"}]}`, filepath.Join(node.Dir, "ipam"))
	podwall := fmt.Sprintf(`{"type":"podwall","agentSocket":%q,"agentTimeout":"300ms"}`, socket)
	conflist := harness.BridgeConflist("podnet", "cni0", []byte(ipam), harness.WithChained([]byte(podwall)))
	nw := node.Network(t, conflist)

	say("\n== podwall enforcement demo: node %s, chain bridge + podwall-ipam + podwall, deny mode", filepath.Base(node.Path()))
	pods := []*demoPod{{"frontend", "web", 8080, nil, netip.Addr{}}, {"backend", "api", 8080, nil, netip.Addr{}}, {"db", "postgres", 5432, nil, netip.Addr{}}}
	say("== 1. pods are added while no agent runs: ADD succeeds, each pod sits behind default-deny chains")
	for _, p := range pods {
		p.pod = node.NewPod(t, p.namespace, p.name)
		start := time.Now()
		res, err := nw.Add(ctx, p.pod)
		if err != nil {
			t.Fatalf("ADD %s/%s: %v", p.namespace, p.name, err)
		}
		ips, err := harness.ResultIPs(res)
		if err != nil {
			t.Fatal(err)
		}
		p.ip = ips[0].Addr()
		p.pod.ServeTCP(t, p.port)
		say("  %-18s %-15s ADD took %v", p.namespace+"/"+p.name, p.ip, time.Since(start).Round(time.Millisecond))
	}

	copyFile(t, filepath.Join(examples, "cluster.yaml"), filepath.Join(policyDir, "cluster.yaml"))
	say("\n== 2. the agent starts with examples/cluster.yaml (namespaces and pods, no policy) and adopts the pods from the kernel")
	agent := exec.Command(filepath.Join(bin, "podwall-agent"), "--policy-dir", policyDir, "--socket", socket, "--default-policy", "deny")
	agent.Stderr = os.Stderr
	if err := node.Start(agent); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_, _ = agent.Process.Wait()
	}()
	wait := func() {
		t.Helper()
		out, err := exec.Command(filepath.Join(bin, "podwallctl"), "--socket", socket, "wait", "--timeout", "20s").CombinedOutput()
		if err != nil {
			t.Fatalf("podwallctl wait: %v\n%s", err, out)
		}
	}
	wait()
	matrix(t, pods, map[string]bool{})

	say("\n== 3. examples/allow.yaml and allow-db.yaml: web -> api:8080, api -> postgres:5432 (egress on the client, ingress on the server)")
	copyFile(t, filepath.Join(examples, "allow.yaml"), filepath.Join(policyDir, "allow.yaml"))
	copyFile(t, filepath.Join(examples, "allow-db.yaml"), filepath.Join(policyDir, "allow-db.yaml"))
	wait()
	matrix(t, pods, map[string]bool{"web->api": true, "api->postgres": true})

	say("\n== 4. examples/change.yaml written over allow-db.yaml: during an incident the database takes no connection")
	copyFile(t, filepath.Join(examples, "change.yaml"), filepath.Join(policyDir, "allow-db.yaml"))
	wait()
	matrix(t, pods, map[string]bool{"web->api": true})

	out, err := exec.Command(filepath.Join(bin, "podwallctl"), "--socket", socket, "status").CombinedOutput()
	if err != nil {
		t.Errorf("podwallctl status: %v", err)
	}
	say("\n$ podwallctl status\n%s", indent(string(out)))
	rules, _ := node.Run("iptables", "-S", "PODWALL-FORWARD")
	say("$ iptables -S PODWALL-FORWARD   (in the node)\n%s", indent(rules))
	apiKey := policy.ChainKey("podnet", pods[1].pod.ContainerID, pods[1].pod.IfName)
	for _, chain := range []string{"PODWALL-F-" + apiKey, "PODWALL-IN-" + apiKey, "PODWALL-OUT-" + apiKey} {
		rules, _ = node.Run("iptables", "-S", chain)
		say("$ iptables -S %s   (backend/api)\n%s", chain, indent(rules))
	}

	say("== 5. clean up: pods deleted through CNI DEL; none of podwall's chains is left")
	for _, p := range pods {
		if err := nw.Del(ctx, p.pod); err != nil {
			t.Errorf("DEL %s: %v", p.name, err)
		}
	}
	left, _ := node.Run("iptables-save")
	if strings.Contains(left, "PODWALL-") {
		t.Errorf("podwall chains left after every pod was deleted:\n%s", left)
	}
	say("  iptables-save of the node holds no PODWALL- chain: %v", !strings.Contains(left, "PODWALL-"))
}

// matrix probes every pair and prints the connectivity matrix; allowed names
// the pairs ("web->api") that must connect. Every other pair must not.
func matrix(t *testing.T, pods []*demoPod, allowed map[string]bool) {
	t.Helper()
	header := fmt.Sprintf("  %-10s", "from \\ to")
	for _, to := range pods {
		header += fmt.Sprintf(" %-16s", fmt.Sprintf("%s:%d", to.name, to.port))
	}
	say("%s", header)
	for _, from := range pods {
		line := fmt.Sprintf("  %-10s", from.name)
		for _, to := range pods {
			if from == to {
				line += fmt.Sprintf(" %-16s", "-")
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			reply, err := from.pod.ConnectTCP(ctx, netip.AddrPortFrom(to.ip, uint16(to.port)).String())
			cancel()
			got := err == nil && reply == to.namespace+"/"+to.name
			mark := "denied"
			if got {
				mark = "ALLOWED"
			}
			line += fmt.Sprintf(" %-16s", mark)
			if want := allowed[from.name+"->"+to.name]; got != want {
				t.Errorf("%s -> %s: allowed=%v, want %v (%v)", from.name, to.name, got, want, err)
			}
		}
		say("%s", line)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
