package policy_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/iptsim"
	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// mustPolicy reads a NetworkPolicy written in YAML.
func mustPolicy(t testing.TB, doc string) *networkingv1.NetworkPolicy {
	t.Helper()
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
		t.Fatalf("bad policy YAML: %v\n%s", err, doc)
	}
	return &np
}

// ports parses "http=8080/TCP dns=53/UDP" into container ports.
func ports(spec string) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, f := range strings.Fields(spec) {
		name, rest, _ := strings.Cut(f, "=")
		num, proto, _ := strings.Cut(rest, "/")
		n, _ := strconv.Atoi(num)
		out = append(out, corev1.ContainerPort{Name: name, ContainerPort: int32(n), Protocol: corev1.Protocol(proto)})
	}
	return out
}

// addPod adds a pod on node-1 unless node is given; v4 or v6 may be "".
func (c *testCluster) addPod(ns, name string, labels map[string]string, v4, v6 string, cports []corev1.ContainerPort, node ...string) *testPod {
	if _, ok := c.nsLabels[ns]; !ok {
		c.setNamespace(ns, nil)
	}
	p := &testPod{ns: ns, name: name, labels: labels, node: "node-1", ports: cports}
	if len(node) > 0 {
		p.node = node[0]
	}
	if v4 != "" {
		p.v4 = netip.MustParseAddr(v4)
	}
	if v6 != "" {
		p.v6 = netip.MustParseAddr(v6)
	}
	c.pods = append(c.pods, p)
	return p
}

// world compiles a cluster for every node that has pods and judges packets
// across nodes: the source's node runs its egress chain, the destination's
// node its ingress chain.
type world struct {
	t       testing.TB
	c       *testCluster
	desired map[string]*ruleset.Desired
	sims    map[string]*iptsim.Simulator
}

func compileWorld(t testing.TB, c *testCluster, mode policy.Mode) *world {
	t.Helper()
	w := &world{t: t, c: c, desired: map[string]*ruleset.Desired{}, sims: map[string]*iptsim.Simulator{}}
	for _, p := range c.pods {
		if _, done := w.sims[p.node]; done {
			continue
		}
		w.desired[p.node], w.sims[p.node] = compileNode(t, c, mode, p.node)
	}
	return w
}

// endpoint resolves "ns/pod" to a pod address, or takes an address literal.
func (w *world) endpoint(s string, f ruleset.Family) (netip.Addr, *testPod) {
	w.t.Helper()
	if a, err := netip.ParseAddr(s); err == nil {
		return a, nil
	}
	ns, name, _ := strings.Cut(s, "/")
	p := w.c.pod(ns, name)
	if p == nil {
		w.t.Fatalf("no pod %s", s)
	}
	return p.addr(f), p
}

// allowed judges one packet; the family is the one of the addresses.
func (w *world) allowed(from, to string, proto corev1.Protocol, port uint16, f ruleset.Family) (bool, string) {
	w.t.Helper()
	src, srcPod := w.endpoint(from, f)
	dst, dstPod := w.endpoint(to, f)
	if !src.IsValid() || !dst.IsValid() {
		w.t.Fatalf("%s -> %s has no %s addresses", from, to, f)
	}
	pkt := iptsim.Packet{Src: src, Dst: dst, Protocol: proto, DstPort: port}
	ok := true
	var why []string
	if srcPod != nil {
		v, err := w.sims[srcPod.node].Evaluate(pkt)
		if err != nil {
			w.t.Fatal(err)
		}
		ok = ok && v.Egress.Allowed
		why = append(why, "egress: "+v.Egress.String())
	}
	if dstPod != nil {
		v, err := w.sims[dstPod.node].Evaluate(pkt)
		if err != nil {
			w.t.Fatal(err)
		}
		ok = ok && v.Ingress.Allowed
		why = append(why, "ingress: "+v.Ingress.String())
	}
	return ok, strings.Join(why, "; ")
}

// probe is "from to proto/port" with an expected verdict, for example
// {"x/a", "x/b", "TCP/80", true}.
type expectation struct {
	from, to string
	what     string // "TCP/80", or "UDP/53"
	allow    bool
}

func (w *world) expect(f ruleset.Family, exps ...expectation) {
	w.t.Helper()
	for _, e := range exps {
		proto, port, _ := strings.Cut(e.what, "/")
		n, err := strconv.Atoi(port)
		if err != nil {
			w.t.Fatalf("bad expectation %q", e.what)
		}
		got, why := w.allowed(e.from, e.to, corev1.Protocol(proto), uint16(n), f)
		if got != e.allow {
			w.t.Errorf("%s %s -> %s %s: want allowed=%t, got %t (%s)", f, e.from, e.to, e.what, e.allow, got, why)
		}
	}
}

func (w *world) dump() string {
	var b strings.Builder
	for node, d := range w.desired {
		fmt.Fprintf(&b, "node %s:\n", node)
		for _, ch := range d.Chains {
			for _, r := range ch.Rules {
				fmt.Fprintf(&b, "  [%s] -A %s %s\n", ch.Family, ch.Name, r)
			}
		}
		for _, s := range d.Sets {
			fmt.Fprintf(&b, "  set %s %s %s: %s\n", s.Name, s.Type, s.Comment, strings.Join(s.Members, " "))
		}
	}
	return b.String()
}
