package policy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/iptsim"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// The cyclonus cluster: namespaces x, y, z with pods a, b, c, each serving
// ports 80 and 81 over TCP, UDP and SCTP under cyclonus' port names.
var (
	cyclonusNamespaces = []string{"x", "y", "z"}
	cyclonusPods       = []string{"a", "b", "c"}
	cyclonusProtocols  = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	cyclonusPorts      = []int32{80, 81}
)

// cyclonusIPv4 places the pods around z/c, whose address cyclonus turns
// into its ipBlock peers (z/c's /24 except its /28): some pods fall in the
// except, some in the rest of the block, some outside it. Pods that test
// cases create get addresses here too. The IPv6 address mirrors the IPv4
// one: fd00:0:0:<third octet>::<fourth octet>, so the /120 and /124 that
// cyclonus derives from an IPv6 z/c split the pods the same way.
var cyclonusIPv4 = map[string]string{
	"x/a": "10.0.1.5", "x/b": "10.0.1.40", "x/c": "10.0.2.9",
	"y/a": "10.0.1.77", "y/b": "10.0.1.14", "y/c": "10.0.3.20",
	"z/a": "10.0.1.250", "z/b": "10.0.4.1", "z/c": "10.0.1.2",
	"x/d": "10.0.1.9", "y-2/a": "10.0.1.100", "y-2/b": "10.0.5.5", "w/a": "10.0.1.3",
}

func cyclonusAddrs(ns, name string) (netip.Addr, netip.Addr, error) {
	s, ok := cyclonusIPv4[ns+"/"+name]
	if !ok {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("no address planned for pod %s/%s", ns, name)
	}
	v4 := netip.MustParseAddr(s)
	b := v4.As4()
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:0:0:%x::%x", b[2], b[3]))
	return v4, v6, nil
}

func cyclonusContainerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range cyclonusPorts {
		for _, proto := range cyclonusProtocols {
			out = append(out, corev1.ContainerPort{
				Name:          fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))),
				ContainerPort: port,
				Protocol:      proto,
			})
		}
	}
	return out
}

func newCyclonusCluster(nodeOf func(ns, pod string) string) (*testCluster, error) {
	c := newTestCluster()
	for _, ns := range cyclonusNamespaces {
		c.setNamespace(ns, map[string]string{"ns": ns})
		for _, name := range cyclonusPods {
			if err := c.addCyclonusPod(ns, name, map[string]string{"pod": name}, nodeOf); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

func (c *testCluster) addCyclonusPod(ns, name string, labels map[string]string, nodeOf func(ns, pod string) string) error {
	v4, v6, err := cyclonusAddrs(ns, name)
	if err != nil {
		return err
	}
	c.pods = append(c.pods, &testPod{
		ns: ns, name: name, labels: labels, v4: v4, v6: v6,
		node: nodeOf(ns, name), ports: cyclonusContainerPorts(),
	})
	return nil
}

// apply performs one cyclonus action, as cyclonus' TestCaseState does.
func (c *testCluster) apply(a *generator.Action, nodeOf func(ns, pod string) string) error {
	switch {
	case a.CreatePolicy != nil:
		p := a.CreatePolicy.Policy
		if c.policyIndex(p.Namespace, p.Name) >= 0 {
			return fmt.Errorf("create policy %s/%s: exists", p.Namespace, p.Name)
		}
		c.policies = append(c.policies, p.DeepCopy())
	case a.UpdatePolicy != nil:
		p := a.UpdatePolicy.Policy
		i := c.policyIndex(p.Namespace, p.Name)
		if i < 0 {
			return fmt.Errorf("update policy %s/%s: not found", p.Namespace, p.Name)
		}
		c.policies[i] = p.DeepCopy()
	case a.DeletePolicy != nil:
		i := c.policyIndex(a.DeletePolicy.Namespace, a.DeletePolicy.Name)
		if i < 0 {
			return fmt.Errorf("delete policy %s/%s: not found", a.DeletePolicy.Namespace, a.DeletePolicy.Name)
		}
		c.policies = append(c.policies[:i:i], c.policies[i+1:]...)
	case a.CreateNamespace != nil:
		if _, ok := c.nsLabels[a.CreateNamespace.Namespace]; ok {
			return fmt.Errorf("create namespace %s: exists", a.CreateNamespace.Namespace)
		}
		c.setNamespace(a.CreateNamespace.Namespace, a.CreateNamespace.Labels)
	case a.SetNamespaceLabels != nil:
		if _, ok := c.nsLabels[a.SetNamespaceLabels.Namespace]; !ok {
			return fmt.Errorf("set labels of namespace %s: not found", a.SetNamespaceLabels.Namespace)
		}
		c.setNamespace(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels)
	case a.DeleteNamespace != nil:
		ns := a.DeleteNamespace.Namespace
		if _, ok := c.nsLabels[ns]; !ok {
			return fmt.Errorf("delete namespace %s: not found", ns)
		}
		delete(c.nsLabels, ns)
		var kept []*testPod
		for _, p := range c.pods {
			if p.ns != ns {
				kept = append(kept, p)
			}
		}
		c.pods = kept
		var keptPolicies []*networkingv1.NetworkPolicy
		for _, p := range c.policies {
			if p.Namespace != ns {
				keptPolicies = append(keptPolicies, p)
			}
		}
		c.policies = keptPolicies
	case a.CreatePod != nil:
		if _, ok := c.nsLabels[a.CreatePod.Namespace]; !ok {
			return fmt.Errorf("create pod %s/%s: no namespace", a.CreatePod.Namespace, a.CreatePod.Pod)
		}
		if c.pod(a.CreatePod.Namespace, a.CreatePod.Pod) != nil {
			return fmt.Errorf("create pod %s/%s: exists", a.CreatePod.Namespace, a.CreatePod.Pod)
		}
		return c.addCyclonusPod(a.CreatePod.Namespace, a.CreatePod.Pod, a.CreatePod.Labels, nodeOf)
	case a.SetPodLabels != nil:
		p := c.pod(a.SetPodLabels.Namespace, a.SetPodLabels.Pod)
		if p == nil {
			return fmt.Errorf("set labels of pod %s/%s: not found", a.SetPodLabels.Namespace, a.SetPodLabels.Pod)
		}
		p.labels = a.SetPodLabels.Labels
	case a.DeletePod != nil:
		if !c.deletePod(a.DeletePod.Namespace, a.DeletePod.Pod) {
			return fmt.Errorf("delete pod %s/%s: not found", a.DeletePod.Namespace, a.DeletePod.Pod)
		}
	default:
		return fmt.Errorf("unsupported action %+v", a)
	}
	return nil
}

// oraclePolicies are the policies cyclonus' matcher judges by: the cluster's,
// with policyTypes defaulted as the API server does, plus, in deny mode, a
// deny-all Ingress+Egress policy in every namespace.
func (c *testCluster) oraclePolicies(mode policy.Mode) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, p := range c.policies {
		p = p.DeepCopy()
		if len(p.Spec.PolicyTypes) == 0 {
			p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(p.Spec.Egress) > 0 {
				p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
			}
		}
		out = append(out, p)
	}
	if mode == policy.ModeDeny {
		for _, ns := range c.namespaces() {
			out = append(out, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "podwall-deny-mode"},
				Spec: networkingv1.NetworkPolicySpec{
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				},
			})
		}
	}
	return out
}

// probe is one connection cyclonus would try.
type probe struct {
	from, to *testPod
	port     int
	portName string
	proto    corev1.Protocol
}

// probes lists the connections of a probe config the way cyclonus'
// JobBuilder does; connections it marks invalid (a port the destination
// does not serve) are left out, as cyclonus leaves them out of its table.
func (c *testCluster) probes(pc *generator.ProbeConfig) ([]probe, error) {
	var out []probe
	for _, from := range c.pods {
		for _, to := range c.pods {
			switch {
			case pc.AllAvailable:
				for _, cp := range to.ports {
					out = append(out, probe{from, to, int(cp.ContainerPort), cp.Name, cp.Protocol})
				}
			case pc.PortProtocol != nil:
				pp := pc.PortProtocol
				pr := probe{from: from, to: to, proto: pp.Protocol}
				for _, cp := range to.ports {
					if (pp.Port.Type == intstr.String && cp.Name == pp.Port.StrVal) ||
						(pp.Port.Type == intstr.Int && cp.ContainerPort == pp.Port.IntVal) {
						pr.port, pr.portName = int(cp.ContainerPort), cp.Name
						out = append(out, pr)
						break
					}
				}
			default:
				return nil, fmt.Errorf("unsupported probe config %+v", pc)
			}
		}
	}
	return out, nil
}

type conformanceVariant struct {
	name     string
	cidrFrom policy.Family // the family of z/c's address given to the generator
	allowDNS bool
	nodes    []string
	nodeOf   func(ns, pod string) string
}

func conformanceVariants() []conformanceVariant {
	oneNode := func(string, string) string { return "node-1" }
	twoNodes := func(ns, pod string) string {
		switch ns + "/" + pod {
		case "x/b", "y/a", "y/c", "z/b", "z/c", "y-2/b":
			return "node-2"
		}
		return "node-1"
	}
	return []conformanceVariant{
		{name: "ipv4-blocks/one-node", cidrFrom: policy.IPv4, allowDNS: true, nodes: []string{"node-1"}, nodeOf: oneNode},
		{name: "ipv6-blocks/two-nodes", cidrFrom: policy.IPv6, allowDNS: false, nodes: []string{"node-1", "node-2"}, nodeOf: twoNodes},
	}
}

// TestCyclonusConformance replays every test case cyclonus' generator has
// (all of GenerateAllTestCases, whatever tags the CLI would exclude by
// default) on an in-memory cluster, compiles after every step, and compares
// the simulated verdict of every (source pod, destination pod, port,
// protocol) of the step's probe, over IPv4 and over IPv6, with cyclonus'
// matcher: egress and ingress separately. Pods are dual-stack; pod-to-itself
// is compared too (the chains would judge it like any other pair; on a real
// node that traffic stays inside the pod and never reaches them).
func TestCyclonusConformance(t *testing.T) {
	for _, v := range conformanceVariants() {
		for _, mode := range []policy.Mode{policy.ModeKubernetes, policy.ModeDeny} {
			t.Run(v.name+"/"+string(mode), func(t *testing.T) {
				t.Parallel()
				runConformance(t, v, mode)
			})
		}
	}
}

func runConformance(t *testing.T, v conformanceVariant, mode policy.Mode) {
	v4, v6, err := cyclonusAddrs("z", "c")
	if err != nil {
		t.Fatal(err)
	}
	podIP := v4
	if v.cidrFrom == policy.IPv6 {
		podIP = v6
	}
	gen := generator.NewTestCaseGenerator(v.allowDNS, podIP.String(), cyclonusNamespaces, nil, nil)
	cases := gen.GenerateAllTestCases()
	if n := len(gen.GenerateTestCases()); n != len(cases) {
		t.Fatalf("generator with no tag filter gives %d cases, all cases are %d", n, len(cases))
	}
	if len(cases) != 230 {
		t.Errorf("cyclonus v0.5.6 generates 230 test cases, got %d: update this test", len(cases))
	}

	var total tally
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%03d", i), func(t *testing.T) {
			total.add(runCyclonusCase(t, tc, v, mode))
		})
	}
	t.Logf("%s, %s mode: %d cases, %d steps, %d probes; the oracle allowed %d (egress %d, ingress %d) and denied %d",
		v.name, mode, len(cases), total.steps, total.probes, total.allowed, total.egressAllowed, total.ingressAllowed, total.probes-total.allowed)
	if total.allowed == 0 || total.allowed == total.probes {
		t.Errorf("the oracle never allowed or never denied: the comparison proves nothing")
	}
}

// tally counts what a conformance run compared.
type tally struct {
	steps, probes, allowed, egressAllowed, ingressAllowed int
}

func (t *tally) add(o tally) {
	t.steps += o.steps
	t.probes += o.probes
	t.allowed += o.allowed
	t.egressAllowed += o.egressAllowed
	t.ingressAllowed += o.ingressAllowed
}

func runCyclonusCase(t *testing.T, tc *generator.TestCase, v conformanceVariant, mode policy.Mode) (n tally) {
	c, err := newCyclonusCluster(v.nodeOf)
	if err != nil {
		t.Fatal(err)
	}
	for si, step := range tc.Steps {
		n.steps++
		for _, a := range step.Actions {
			if err := c.apply(a, v.nodeOf); err != nil {
				t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
			}
		}
		desired := map[string]*policy.Desired{}
		sims := map[string]*iptsim.Simulator{}
		for _, node := range v.nodes {
			d, sim := compileNode(t, c, mode, node)
			if len(d.Problems) > 0 {
				t.Errorf("%q step %d: unexpected problems: %v", tc.Description, si+1, d.Problems)
			}
			desired[node], sims[node] = d, sim
		}
		oracle := matcher.BuildNetworkPolicies(true, c.oraclePolicies(mode))
		jobs, err := c.probes(step.Probe)
		if err != nil {
			t.Fatal(err)
		}
		peers := map[*testPod]map[policy.Family]*matcher.TrafficPeer{}
		for _, p := range c.pods {
			peers[p] = map[policy.Family]*matcher.TrafficPeer{}
			for _, f := range policy.Families() {
				peers[p][f] = c.trafficPeer(p, f)
			}
		}
		var mismatches []string
		for _, j := range jobs {
			for _, f := range policy.Families() {
				n.probes++
				pkt := iptsim.Packet{Src: j.from.addr(f), Dst: j.to.addr(f), Protocol: j.proto, DstPort: uint16(j.port)}
				want := oracle.IsTrafficAllowed(&matcher.Traffic{
					Source:           peers[j.from][f],
					Destination:      peers[j.to][f],
					ResolvedPort:     j.port,
					ResolvedPortName: j.portName,
					Protocol:         j.proto,
				})
				wantEg, wantIn := want.Egress.IsAllowed(), want.Ingress.IsAllowed()
				n.allowed += b2i(want.IsAllowed())
				n.egressAllowed += b2i(wantEg)
				n.ingressAllowed += b2i(wantIn)
				src, err := sims[j.from.node].Evaluate(pkt)
				if err != nil {
					t.Fatal(err)
				}
				dst := src
				if j.to.node != j.from.node {
					if dst, err = sims[j.to.node].Evaluate(pkt); err != nil {
						t.Fatal(err)
					}
				}
				if !src.Egress.Evaluated || !dst.Ingress.Evaluated {
					t.Fatalf("%s: local pods were not found in their node's chains", pkt)
				}
				if src.Egress.Allowed != wantEg || dst.Ingress.Allowed != wantIn {
					mismatches = append(mismatches, fmt.Sprintf(
						"  %s/%s -> %s/%s %s/%d (%s) %s:\n    egress:  want allowed=%t, got %s\n    ingress: want allowed=%t, got %s\n%s%s",
						j.from.ns, j.from.name, j.to.ns, j.to.name, j.proto, j.port, j.portName, f,
						wantEg, src.Egress, wantIn, dst.Ingress,
						dumpChains(desired[j.from.node], f, j.from.ref()),
						dumpChains(desired[j.to.node], f, j.to.ref())))
				}
			}
		}
		if n := len(mismatches); n > 0 {
			const shown = 5
			more := ""
			if len(mismatches) > shown {
				more = fmt.Sprintf("  ... and %d more\n", len(mismatches)-shown)
				mismatches = mismatches[:shown]
			}
			policies, _ := yaml.Marshal(c.oraclePolicies(mode))
			t.Errorf("cyclonus case %q (tags %v), step %d, %s mode: %d verdicts differ from the matcher:\n%s\n%s  policies judged by the matcher:\n%s",
				tc.Description, tc.Tags.Keys(), si+1, mode, n, strings.Join(mismatches, "\n"), more, policies)
		}
	}
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *testCluster) trafficPeer(p *testPod, f policy.Family) *matcher.TrafficPeer {
	return &matcher.TrafficPeer{
		IP: p.addr(f).String(),
		Internal: &matcher.InternalPeer{
			PodLabels:       p.labels,
			NamespaceLabels: c.nsLabels[p.ns],
			Namespace:       p.ns,
		},
	}
}
