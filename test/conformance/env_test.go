package conformance_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/harness"
)

const (
	netName  = "podnet"
	syncWait = 20 * time.Second
)

// podSubnet holds the pods. The IPAM range excludes all of it but the
// addresses below, which podwall-ipam hands out in ascending order; the base
// pods are added in addOrder, so pod addOrder[i] gets podAddrs[i]. z/c gets
// 10.0.5.66: the ipBlock peers cyclonus derives from it, 10.0.5.0/24 except
// 10.0.5.64/28, put three pods outside the block, three in it and three
// (z/c included) in the except. Pods that cases create take the spares.
var (
	podSubnet = netip.MustParsePrefix("10.0.0.0/16")
	addOrder  = []string{"x/a", "y/b", "z/b", "y/a", "x/b", "z/c", "y/c", "x/c", "z/a"}
	podAddrs  = []string{
		"10.0.1.10", "10.0.2.20", "10.0.3.30", "10.0.5.5", "10.0.5.40",
		"10.0.5.66", "10.0.5.67", "10.0.5.70", "10.0.5.90",
		// spares
		"10.0.5.100", "10.0.5.200", "10.0.6.6", "10.0.7.7", "10.0.8.8",
	}
)

// livePod is a pod of the model that exists: attached and serving.
type livePod struct {
	ns, name string
	pod      *harness.Pod
	ip       netip.Addr
	stop     func()
}

func (p *livePod) ref() string { return p.ns + "/" + p.name }

// env is one node running the agent in one mode, with the pods of the
// cyclonus cluster as they are now.
type env struct {
	t    *testing.T // the running case, or the mode's test while setting up
	root *testing.T // the mode's test, which owns the node and the pods
	deny bool
	// denyAllInDir writes the oracle's deny-all policies into the
	// directory too. Deny mode alternates it per case, so that both the
	// agent's own default and explicit deny-all policies meet the oracle.
	denyAllInDir bool
	node         *harness.Node
	nw           *harness.Network
	dir          string
	socket       string
	client       *agentapi.Client
	pods         map[string]*livePod // by "ns/name"
}

func newEnv(t *testing.T, mode policy.Mode) *env {
	t.Helper()
	harness.CheckHostUnchanged(t)
	bin, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	node := harness.NewNode(t)
	e := &env{
		t: t, root: t, deny: mode == policy.ModeDeny, node: node,
		dir: filepath.Join(node.Dir, "policies"), socket: filepath.Join(node.Dir, "agent.sock"),
		pods: map[string]*livePod{},
	}
	if err := os.Mkdir(e.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ipam, err := json.Marshal(map[string]any{
		"type": "podwall-ipam", "dataDir": filepath.Join(node.Dir, "ipam"),
		"ranges": []map[string]string{{"subnet": podSubnet.String()}}, "exclude": cyclonus.ExcludeAllBut(podSubnet, podAddrs),
	})
	if err != nil {
		t.Fatal(err)
	}
	podwall, _ := json.Marshal(map[string]string{"type": "podwall", "agentSocket": e.socket, "agentTimeout": "300ms"})
	e.nw = node.Network(t, harness.BridgeConflist(netName, "cni0", ipam, harness.WithChained(podwall)))

	base := cyclonus.NewCluster()
	e.writeManifests(base)
	agent := exec.Command(filepath.Join(bin, "podwall-agent"), "--policy-dir", e.dir, "--socket", e.socket, "--default-policy", string(mode))
	agent.Stderr = &agentLog{t: t}
	if err := node.Start(agent); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _, _ = agent.Process.Wait() })
	e.client = agentapi.NewClient(e.socket)
	e.sync()
	slices.SortFunc(base.Pods, func(a, b *cyclonus.Pod) int {
		return slices.Index(addOrder, a.Namespace+"/"+a.Name) - slices.Index(addOrder, b.Namespace+"/"+b.Name)
	})
	e.reconcile(base)
	for i, ref := range addOrder {
		if got := e.pods[ref].ip.String(); got != podAddrs[i] {
			t.Logf("pod %s got %s, not the planned %s: the ipBlock cases split the pods differently", ref, got, podAddrs[i])
		}
	}
	return e
}

// agentLog keeps the agent's log out of the way unless the test is verbose
// or fails: the agent logs every apply.
type agentLog struct{ t *testing.T }

func (l *agentLog) Write(p []byte) (int, error) {
	if testing.Verbose() {
		l.t.Logf("agent: %s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// reconcile makes the node match the model: manifests written, pods the
// model no longer has deleted, new pods added and serving, and the agent
// caught up. Conntrack is flushed so every probe is judged as a new flow:
// a UDP probe reusing a port of an earlier allowed flow would otherwise
// pass as established.
func (e *env) reconcile(c *cyclonus.Cluster) {
	e.t.Helper()
	e.writeManifests(c)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for ref, lp := range e.pods {
		ns, name, _ := strings.Cut(ref, "/")
		if c.Pod(ns, name) != nil {
			continue
		}
		lp.stop()
		if err := e.nw.Del(ctx, lp.pod); err != nil {
			e.t.Fatalf("DEL %s: %v", ref, err)
		}
		if err := lp.pod.Remove(); err != nil {
			e.t.Fatalf("removing pod %s: %v", ref, err)
		}
		delete(e.pods, ref)
	}
	for _, p := range c.Pods {
		if _, ok := e.pods[p.Namespace+"/"+p.Name]; !ok {
			e.addPod(ctx, p.Namespace, p.Name)
		}
	}
	err := e.node.Do(func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) })
	if err != nil {
		e.t.Fatalf("flushing conntrack in the node: %v", err)
	}
	e.sync()
}

func (e *env) addPod(ctx context.Context, ns, name string) {
	e.t.Helper()
	pod, err := e.node.CreatePod(ns, name)
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := e.nw.Add(ctx, pod)
	if err != nil {
		e.t.Fatalf("ADD %s/%s: %v", ns, name, err)
	}
	ips, err := harness.ResultIPs(res)
	if err != nil || len(ips) == 0 {
		e.t.Fatalf("ADD %s/%s: no address in the result (%v)", ns, name, err)
	}
	stop, err := cyclonus.Serve(pod)
	if err != nil {
		e.t.Fatalf("serving in %s/%s: %v", ns, name, err)
	}
	e.root.Cleanup(stop)
	e.pods[ns+"/"+name] = &livePod{ns: ns, name: name, pod: pod, ip: ips[0].Addr(), stop: stop}
}

// sync makes the agent catch up with the directory, as podwallctl wait
// does, and fails on anything it could not enforce.
func (e *env) sync() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), syncWait)
	defer cancel()
	for {
		st, err := e.client.Sync(ctx)
		if err == nil {
			if len(st.Problems) > 0 || st.LastError != "" {
				e.t.Fatalf("agent: problems %v, last error %q", st.Problems, st.LastError)
			}
			return
		}
		if ctx.Err() != nil {
			e.t.Fatalf("agent did not catch up within %v: %v", syncWait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeManifests writes the model as the agent reads it: namespaces and
// pods in one file, policies in another (with denyAllInDir, a deny-all
// policy per namespace, as the oracle has it), each replaced atomically.
func (e *env) writeManifests(c *cyclonus.Cluster) {
	e.t.Helper()
	var cluster, policies []any
	for _, ns := range c.SortedNamespaces() {
		cluster = append(cluster, corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: c.NamespaceLabels[ns]},
		})
	}
	for _, p := range c.Pods {
		cluster = append(cluster, corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "serve", Image: "probe", Ports: cyclonus.ContainerPorts()},
			}},
		})
	}
	for _, np := range c.Policies {
		np = np.DeepCopy()
		np.APIVersion, np.Kind = "networking.k8s.io/v1", "NetworkPolicy"
		policies = append(policies, np)
	}
	if e.deny && e.denyAllInDir {
		for _, ns := range c.SortedNamespaces() {
			policies = append(policies, cyclonus.DenyAll(ns))
		}
	}
	e.writeFile("cluster.yaml", cluster)
	e.writeFile("policies.yaml", policies)
}

func (e *env) writeFile(name string, docs []any) {
	e.t.Helper()
	var b strings.Builder
	b.WriteString("# written by the cyclonus conformance test\n")
	for _, d := range docs {
		out, err := yaml.Marshal(d)
		if err != nil {
			e.t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(out)
	}
	tmp := filepath.Join(e.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

// chains renders the node's chains of a pod, for a mismatch report.
func (e *env) chains(lp *livePod, kinds ...string) string {
	key := policy.ChainKey(netName, lp.pod.ContainerID, lp.pod.IfName)
	var b strings.Builder
	for _, kind := range kinds {
		out, err := e.node.Run("iptables", "-w", "-S", "PODWALL-"+kind+"-"+key)
		if err != nil {
			fmt.Fprintf(&b, "    (%v)\n", err)
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			fmt.Fprintf(&b, "    %s\n", line)
		}
	}
	return b.String()
}

// ipsets lists the node's sets with their members, for a mismatch report.
func (e *env) ipsets() string {
	out, err := e.node.Run("ipset", "list")
	if err != nil {
		return fmt.Sprintf("    (ipset list: %v)\n", err)
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "Name:") || (line != "" && !strings.Contains(line, ":")) {
			fmt.Fprintf(&b, "    %s\n", line)
		}
	}
	return b.String()
}
