package enforcementtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// agentProc is a podwall-agent running in a node namespace.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
}

// startAgent runs the real agent binary on the node, in deny mode.
func (e *env) startAgent(policyDir string) *agentProc {
	e.t.Helper()
	cmd := exec.Command(harness.PluginPath(e.t, "podwall-agent"), "--policy-dir", policyDir,
		"--socket", e.node.Dir+"/agent.sock", "--default-policy", "deny", "--log-level", "debug")
	cmd.Stderr = e.t.Output()
	if err := e.node.Start(cmd); err != nil {
		e.t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("agent exit: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
}

// ctl runs podwallctl against the node's agent.
func (e *env) ctl(args ...string) (string, error) {
	args = append([]string{"--socket", e.node.Dir + "/agent.sock"}, args...)
	out, err := exec.Command(harness.PluginPath(e.t, "podwallctl"), args...).CombinedOutput()
	return string(out), err
}

func (e *env) mustWait() {
	e.t.Helper()
	start := time.Now()
	out, err := e.ctl("wait", "--timeout", "20s")
	if err != nil {
		e.t.Fatalf("podwallctl wait: %v\n%s", err, out)
	}
	e.t.Logf("podwallctl wait took %v: %s", time.Since(start), strings.TrimSpace(out))
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// kernelState is our part of iptables-save and ipset, counters dropped.
func (e *env) kernelState() []string {
	e.t.Helper()
	state := slices.Clone(e.ourRules())
	for i := range state {
		state[i] = counters.ReplaceAllString(state[i], "")
	}
	for _, line := range strings.Split(e.node.MustRun(e.t, "ipset", "save"), "\n") {
		if strings.Contains(line, "PODWALL") {
			state = append(state, "ipset: "+line)
		}
	}
	slices.Sort(state)
	return state
}

// The real agent, driven by a policy dir: deny by default, a policy opens
// exactly its traffic as soon as podwallctl wait returns, a restarted agent
// adopts the pods without changing anything in the kernel, and deleting
// the policy closes the traffic again.
func TestAgentEnforcesThePolicyDir(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.60.0/24")
	policies := t.TempDir()
	writePolicyFile(t, policies, "pods.yaml", `apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: client}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec:
  containers: [{name: web, image: web, ports: [{name: http, containerPort: 8080}]}]
`)
	agent := e.startAgent(policies)
	e.mustWait()

	a, _ := e.add("a")
	b, ipB := e.add("b")
	b.ServeTCP(t, 8080)
	b.ServeTCP(t, 9090)
	web, other := addr(ipB, 8080), addr(ipB, 9090)
	denied(t, a, web)

	writePolicyFile(t, policies, "allow.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
`)
	e.mustWait() // no sleep between writing and wait
	reaches(t, a, web, "x/b")
	denied(t, a, other)

	status, err := e.ctl("status")
	if err != nil || !strings.Contains(status, "Ready:           yes") || !strings.Contains(status, "Pods:            2 (2 programmed)") {
		t.Errorf("podwallctl status: %v\n%s", err, status)
	}

	// Restart: the kernel state is left alone while the agent is down and
	// adopted unchanged.
	before := e.kernelState()
	agent.stop(t)
	if _, err := os.Stat(e.node.Dir + "/agent.sock"); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
	reaches(t, a, web, "x/b")
	agent = e.startAgent(policies)
	e.mustWait()
	if after := e.kernelState(); !slices.Equal(before, after) {
		t.Errorf("restart changed the kernel state:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	reaches(t, a, web, "x/b")

	if err := os.Remove(filepath.Join(policies, "allow.yaml")); err != nil {
		t.Fatal(err)
	}
	e.mustWait()
	denied(t, a, web)
	agent.stop(t)
}

func writePolicyFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
