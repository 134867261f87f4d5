package dataplane_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// testNode is a node netns with a dataplane whose state dir is the node's.
type testNode struct {
	*harness.Node
	stateDir string
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	harness.CheckHostUnchanged(t)
	node := harness.NewNode(t)
	return &testNode{Node: node, stateDir: node.Dir + "/state"}
}

// dp runs fn with a fresh Dataplane inside the node namespace.
func (n *testNode) dp(t *testing.T, fn func(ctx context.Context, d *dataplane.Dataplane) error) {
	t.Helper()
	if err := n.try(fn); err != nil {
		t.Fatal(err)
	}
}

func (n *testNode) try(fn func(ctx context.Context, d *dataplane.Dataplane) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error {
		d, err := dataplane.New(dataplane.Config{StateDir: n.stateDir}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		if err != nil {
			return err
		}
		return fn(ctx, d)
	})
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save returns iptables-save and ip6tables-save of the node without
// comments and counters.
func (n *testNode) save(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(n.MustRun(t, cmd, "-t", "filter"), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(line, "") + "\n")
		}
	}
	return b.String()
}

func testPod(ns, name, key, dev string, layout dataplane.Layout, ips ...string) dataplane.Pod {
	p := dataplane.Pod{
		Key: key, Network: "podnet", ContainerID: strings.Repeat("c", 63) + key[:1], IfName: "eth0",
		Namespace: ns, Name: name, HostIface: dev, Layout: layout,
	}
	for _, s := range ips {
		p.IPs = append(p.IPs, netip.MustParseAddr(s))
	}
	return p
}

// cluster compiles a small cluster for the node's pods.
type cluster struct {
	pods     []corev1.Pod
	policies []networkingv1.NetworkPolicy
	keys     map[ruleset.Ref]string
}

func (c *cluster) addPod(p dataplane.Pod, labels map[string]string) {
	pod := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, a := range p.IPs {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	pod.Status.PodIP = pod.Status.PodIPs[0].IP
	c.pods = append(c.pods, pod)
	if c.keys == nil {
		c.keys = map[ruleset.Ref]string{}
	}
	c.keys[ruleset.Ref{Namespace: p.Namespace, Name: p.Name}] = p.Key
}

func (c *cluster) addPolicy(t *testing.T, doc string) {
	t.Helper()
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
		t.Fatal(err)
	}
	c.policies = append(c.policies, np)
}

func (c *cluster) compile(t *testing.T) *ruleset.Desired {
	t.Helper()
	namespaces := []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x"}}}
	d, err := policy.Compile(policy.Input{Namespaces: namespaces, Pods: c.pods, Policies: c.policies,
		Node: "node-1", Mode: policy.ModeDeny, ChainKeys: c.keys})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Problems) > 0 {
		t.Fatalf("compile problems: %v", d.Problems)
	}
	return d
}
