package kubetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

const (
	netName = "podnet"
	// servePort is where every test pod serves its greeting.
	servePort = 8080
	// denyWait is how long a denied connection attempt is given.
	denyWait = 500 * time.Millisecond
)

// cluster is a control plane with nodes running podwall-agent.
type cluster struct {
	t      *testing.T
	cp     *k8senv.ControlPlane
	client kubernetes.Interface
	nodes  []*kubeNode
}

// kubeNode is a node namespace with its link to the control plane, a
// network bridge + podwall-ipam + podwall, and an agent in Kubernetes mode.
type kubeNode struct {
	c       *cluster
	name    string
	node    *harness.Node
	link    *k8senv.NodeLink
	nw      *harness.Network
	podCIDR netip.Prefix
	agent   *agentProc
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	harness.RequireRoot(t)
	harness.CheckHostUnchanged(t)
	cp := k8senv.StartControlPlane(t)
	return &cluster{t: t, cp: cp, client: cp.Clientset(t)}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// addNode creates the Node object and the node namespace, links it to the
// control plane and routes its pod CIDR there, so that the control
// namespace carries the traffic between nodes. With allocated false the
// Node object has no spec.podCIDRs yet (as before the controller manager
// allocates them); the node's network uses podCIDR all the same.
func (c *cluster) addNode(name, podCIDR string, allocated bool) *kubeNode {
	t := c.t
	t.Helper()
	n := &kubeNode{c: c, name: name, node: harness.NewNode(t), podCIDR: netip.MustParsePrefix(podCIDR)}
	n.link = c.cp.ConnectNode(t, name, n.node.NetNS())
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if allocated {
		node.Spec = corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}
	}
	if _, err := c.client.CoreV1().Nodes().Create(ctxFor(t, time.Minute), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	if err := n.node.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := c.cp.RouteToNode(podCIDR, n.link); err != nil {
		t.Fatalf("routing %s to node %s: %v", podCIDR, name, err)
	}
	for _, other := range c.nodes {
		n.mustRun("ip", "route", "add", other.podCIDR.String(), "via", n.link.ControlIP.String())
		other.mustRun("ip", "route", "add", podCIDR, "via", other.link.ControlIP.String())
	}
	podwall, _ := json.Marshal(map[string]string{"type": "podwall", "agentSocket": n.socket(), "agentTimeout": "2s"})
	ipamConf, _ := json.Marshal(map[string]any{"type": "podwall-ipam", "dataDir": filepath.Join(n.node.Dir, "ipam"),
		"ranges": []map[string]string{{"subnet": podCIDR}}, "routes": []map[string]string{{"dst": "0.0.0.0/0"}}})
	n.nw = n.node.Network(t, harness.BridgeConflist(netName, "cni0", ipamConf, harness.WithChained(podwall)))
	c.nodes = append(c.nodes, n)
	return n
}

func (n *kubeNode) mustRun(args ...string) string { return n.node.MustRun(n.c.t, args...) }

func (n *kubeNode) socket() string       { return filepath.Join(n.node.Dir, "agent.sock") }
func (n *kubeNode) podCIDRsFile() string { return filepath.Join(n.node.Dir, "node-podcidrs.json") }
func (n *kubeNode) agentLog() string     { return filepath.Join(n.node.Dir, "agent.log") }

// agentProc is a podwall-agent running in a node namespace.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
}

// startAgent runs the real agent binary in the node, in Kubernetes mode.
func (n *kubeNode) startAgent(mode string) {
	t := n.c.t
	t.Helper()
	logFile, err := os.OpenFile(n.agentLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.PluginPath(t, "podwall-agent"), "--kubeconfig", n.link.Kubeconfig, "--node-name", n.name,
		"--socket", n.socket(), "--default-policy", mode, "--pod-cidrs-file", n.podCIDRsFile(),
		"--pod-cidrs-check-interval", "300ms")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := n.node.Start(cmd); err != nil {
		t.Fatal(err)
	}
	logFile.Close()
	n.agent = &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() { n.agent.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(n.agentLog())
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			t.Logf("agent of %s, last lines of its log:\n%s", n.name, strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})
}

// stopAgent sends SIGTERM and waits for a clean exit.
func (n *kubeNode) stopAgent() {
	t := n.c.t
	t.Helper()
	if err := n.agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.agent.done:
		if err != nil {
			t.Errorf("agent of %s exit: %v", n.name, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("agent of %s did not stop on SIGTERM", n.name)
	}
}

// ctl runs podwallctl against the node's agent.
func (n *kubeNode) ctl(args ...string) (string, error) {
	args = append([]string{"--socket", n.socket()}, args...)
	out, err := exec.Command(harness.PluginPath(n.c.t, "podwallctl"), args...).CombinedOutput()
	return string(out), err
}

// waitReady waits until the agent answers and has applied once.
func (n *kubeNode) waitReady() {
	t := n.c.t
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if out, err = n.ctl("wait", "--timeout", "10s"); err == nil {
			return
		}
	}
	t.Fatalf("agent of %s never ready: %v\n%s", n.name, err, out)
}

// waitAll runs podwallctl wait on every node (in parallel, as each node's
// agent catches up on its own) and returns how long the slowest took.
func (c *cluster) waitAll() time.Duration {
	c.t.Helper()
	start := time.Now()
	errs := make(chan error, len(c.nodes))
	for _, n := range c.nodes {
		go func() {
			out, err := n.ctl("wait", "--timeout", "30s")
			if err != nil {
				err = fmt.Errorf("podwallctl wait on %s: %v: %s", n.name, err, strings.TrimSpace(out))
			}
			errs <- err
		}()
	}
	for range c.nodes {
		if err := <-errs; err != nil {
			c.t.Fatal(err)
		}
	}
	return time.Since(start)
}

// metrics reads GET /metrics from the agent's socket.
func (n *kubeNode) metrics() (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", n.socket())
	}}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://podwall-agent/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s: %s", resp.Status, body)
	}
	return string(body), err
}

// metric returns one sample's value as written, "" when absent.
func metric(text, name string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// testPod is a pod attached on a node, serving its greeting.
type testPod struct {
	*harness.Pod
	ip netip.Addr
}

func (p *testPod) addr() string { return netip.AddrPortFrom(p.ip, servePort).String() }

// attach runs the CNI ADD for a new pod and starts its server.
func (n *kubeNode) attach(namespace, name string) *testPod {
	t := n.c.t
	t.Helper()
	pod := n.node.NewPod(t, namespace, name)
	res, err := n.nw.Add(ctxFor(t, time.Minute), pod)
	if err != nil {
		t.Fatalf("ADD %s/%s on %s: %v", namespace, name, n.name, err)
	}
	ips, err := harness.ResultIPs(res)
	if err != nil || len(ips) == 0 {
		t.Fatalf("ADD %s/%s: IPs %v, %v", namespace, name, ips, err)
	}
	pod.ServeTCP(t, servePort)
	return &testPod{Pod: pod, ip: ips[0].Addr()}
}

// register creates the pod object on the node, as the kubelet finds it,
// and reports its IP in status.
func (n *kubeNode) register(p *testPod, labels map[string]string) {
	t := n.c.t
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: k8senv.PauseImage,
			Ports: []corev1.ContainerPort{{Name: "greeting", ContainerPort: servePort}}}}},
	}
	created, err := n.c.client.CoreV1().Pods(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip.String(), PodIPs: []corev1.PodIP{{IP: p.ip.String()}}}
	if _, err := n.c.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("pod %s/%s status: %v", p.Namespace, p.Name, err)
	}
}

func (c *cluster) namespace(name string, labels map[string]string) {
	c.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.client.CoreV1().Namespaces().Create(ctxFor(c.t, time.Minute), ns, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// reaches asserts that from connects to to and gets its greeting,
// retrying while a fresh veth settles.
func reaches(t *testing.T, from, to *testPod) {
	t.Helper()
	want := to.Namespace + "/" + to.Name
	var reply string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		reply, err = from.ConnectTCP(ctx, to.addr())
		cancel()
		if err == nil && strings.TrimSpace(reply) == want {
			return
		}
	}
	t.Errorf("%s/%s -> %s/%s (%s): %q, %v; want allowed", from.Namespace, from.Name, to.Namespace, to.Name, to.addr(), reply, err)
}

// denied asserts that from cannot connect to to within denyWait.
func denied(t *testing.T, from, to *testPod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), denyWait)
	defer cancel()
	if reply, err := from.ConnectTCP(ctx, to.addr()); err == nil {
		t.Errorf("%s/%s -> %s/%s (%s): reached (%q); want denied", from.Namespace, from.Name, to.Namespace, to.Name, to.addr(), reply)
	}
}
