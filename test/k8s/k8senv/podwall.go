package k8senv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// PodwallOptions describe how podwall is installed on a kubelet node.
type PodwallOptions struct {
	// DefaultPolicy is the agent's --default-policy: "deny" (default) or
	// "kubernetes".
	DefaultPolicy string
}

// Podwall is podwall installed on a kubelet node: the plugins in the
// runtime's CNI dirs by install.sh, chained after bridge whose IPAM is
// podwall-ipam with the Node's podCIDRs as its range, and podwall-agent in
// Kubernetes mode in the node namespace.
type Podwall struct {
	// Socket is the agent's socket (for podwallctl --socket).
	Socket string
	// PodCIDRsFile is where the agent writes the Node's podCIDRs, which
	// podwall-ipam reads.
	PodCIDRsFile string
	// Conflist is the path of the runtime's configuration after install.sh.
	Conflist string

	node  *KubeletNode
	agent *process
	bin   string
}

// InstallPodwall installs podwall on a node started without a Conflist,
// starts the agent, and waits until the agent is ready and the node Ready.
// The agent runs until the node's teardown has deleted the pods, so that
// their CNI DELs reach it.
func (n *KubeletNode) InstallPodwall(t testing.TB, opts PodwallOptions) *Podwall {
	t.Helper()
	started := time.Now()
	bin, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if opts.DefaultPolicy == "" {
		opts.DefaultPolicy = "deny"
	}
	p := &Podwall{
		Socket:       filepath.Join(n.Dir, "podwall", "agent.sock"),
		PodCIDRsFile: filepath.Join(n.Dir, "podwall", "node-podcidrs.json"),
		Conflist:     filepath.Join(n.CNIConfDir, "10-podnet.conflist"),
		node:         n,
		bin:          bin,
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// Runs before the node's teardown (registered later), while the agent
	// still runs: a hung agent is then visible in its goroutines.
	t.Cleanup(func() {
		if t.Failed() && p.agent != nil {
			p.dumpAgent(t)
		}
	})
	if err := p.install(ctx, opts); err != nil {
		t.Fatalf("installing podwall on node %s: %v", n.Name, err)
	}
	t.Logf("podwall installed on node %s in %v (agent log %s)", n.Name, time.Since(started).Round(time.Millisecond), p.agent.logPath)
	return p
}

func (p *Podwall) install(ctx context.Context, opts PodwallOptions) error {
	n := p.node
	if err := os.MkdirAll(filepath.Dir(p.Socket), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(p.Socket), err)
	}
	// The node's own configuration, which install.sh chains podwall into.
	// containerd 1.6 takes no cniVersion above 1.0.0.
	base, err := json.Marshal(map[string]any{
		"cniVersion": RuntimeCNIVersion,
		"name":       "podnet",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{
				"type":          "podwall-ipam",
				"ranges":        []any{map[string]any{"subnet": "node"}},
				"serviceCIDRs":  []string{ServiceCIDR},
				"dataDir":       filepath.Join(n.Dir, "podwall", "ipam"),
				"nodeCIDRsFile": p.PodCIDRsFile,
			},
		}},
	})
	if err != nil {
		return fmt.Errorf("encoding the node's conflist: %w", err)
	}
	if err := os.WriteFile(p.Conflist, base, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", p.Conflist, err)
	}
	installScript := filepath.Join(filepath.Dir(p.bin), "install.sh")
	if _, err := n.Node.Run(installScript, "--src-dir", p.bin, "--cni-bin-dir", n.CNIBinDir,
		"--cni-conf-dir", n.CNIConfDir, "--agent-socket", p.Socket); err != nil {
		return err
	}
	agent, err := startProcess(n.Node.NetNS(), n.Dir, "podwall-agent", filepath.Join(p.bin, "podwall-agent"),
		"--kubeconfig", n.Link.Kubeconfig, "--node-name", n.Name, "--socket", p.Socket,
		"--default-policy", opts.DefaultPolicy, "--pod-cidrs-file", p.PodCIDRsFile)
	if err != nil {
		return err
	}
	n.procs.add(agent)
	p.agent = agent
	err = poll(ctx, "podwall-agent ready", n.procs.firstExited, func() error {
		_, err := p.Ctl(ctx, "status")
		return err
	})
	if err != nil {
		return err
	}
	return n.WaitReady(ctx)
}

// Ctl runs podwallctl against the node's agent and returns its output.
func (p *Podwall) Ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, "podwallctl"), append([]string{"--socket", p.Socket}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podwallctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Wait runs podwallctl wait: it returns once everything the API server held
// before the call is enforced.
func (p *Podwall) Wait(ctx context.Context) error {
	_, err := p.Ctl(ctx, "wait", "--timeout", "30s")
	return err
}

// AgentLog returns the last lines of the agent's log.
func (p *Podwall) AgentLog(lines int) string { return p.agent.logTail(lines) }

// dumpAgent makes the agent print its goroutines (SIGQUIT: the Go runtime
// dumps them and exits) and logs its whole log.
func (p *Podwall) dumpAgent(t testing.TB) {
	if gone, _ := p.agent.exited(); !gone {
		_ = p.agent.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.agent.done:
		case <-time.After(5 * time.Second):
		}
	}
	data, err := os.ReadFile(p.agent.logPath)
	if err != nil {
		t.Logf("reading the agent's log: %v", err)
		return
	}
	t.Logf("podwall-agent log with its goroutines:\n%s", data)
}
