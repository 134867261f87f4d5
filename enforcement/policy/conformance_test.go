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
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/test/cyclonus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
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

// clusterOf places the pods of cyclonus' model on nodes, at their planned
// addresses, serving cyclonus' ports.
func clusterOf(m *cyclonus.Cluster, nodeOf func(ns, pod string) string) (*testCluster, error) {
	c := newTestCluster()
	for ns, labels := range m.NamespaceLabels {
		c.setNamespace(ns, labels)
	}
	for _, p := range m.Pods {
		v4, v6, err := cyclonusAddrs(p.Namespace, p.Name)
		if err != nil {
			return nil, err
		}
		c.pods = append(c.pods, &testPod{
			ns: p.Namespace, name: p.Name, labels: p.Labels, v4: v4, v6: v6,
			node: nodeOf(p.Namespace, p.Name), ports: cyclonus.ContainerPorts(),
		})
	}
	c.policies = m.Policies
	return c, nil
}

// probe is one connection cyclonus would try.
type probe struct {
	from, to *testPod
	port     int
	portName string
	proto    corev1.Protocol
}

// probes lists the connections of a probe config the way cyclonus'
// JobBuilder does.
func (c *testCluster) probes(pc *generator.ProbeConfig) ([]probe, error) {
	var out []probe
	for _, from := range c.pods {
		for _, to := range c.pods {
			targets, err := cyclonus.Targets(pc, to.ports)
			if err != nil {
				return nil, err
			}
			for _, tg := range targets {
				out = append(out, probe{from, to, tg.Port, tg.PortName, tg.Protocol})
			}
		}
	}
	return out, nil
}

type conformanceVariant struct {
	name     string
	cidrFrom ruleset.Family // the family of z/c's address given to the generator
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
		{name: "ipv4-blocks/one-node", cidrFrom: ruleset.IPv4, allowDNS: true, nodes: []string{"node-1"}, nodeOf: oneNode},
		{name: "ipv6-blocks/two-nodes", cidrFrom: ruleset.IPv6, allowDNS: false, nodes: []string{"node-1", "node-2"}, nodeOf: twoNodes},
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
	if v.cidrFrom == ruleset.IPv6 {
		podIP = v6
	}
	cases, err := cyclonus.Cases(v.allowDNS, podIP.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != cyclonus.CaseCount {
		t.Errorf("cyclonus v0.5.6 generates %d test cases, got %d: update this test", cyclonus.CaseCount, len(cases))
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
	model := cyclonus.NewCluster()
	for si, step := range tc.Steps {
		n.steps++
		for _, a := range step.Actions {
			if err := model.Apply(a); err != nil {
				t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
			}
		}
		c, err := clusterOf(model, v.nodeOf)
		if err != nil {
			t.Fatal(err)
		}
		desired := map[string]*ruleset.Desired{}
		sims := map[string]*iptsim.Simulator{}
		for _, node := range v.nodes {
			d, sim := compileNode(t, c, mode, node)
			if len(d.Problems) > 0 {
				t.Errorf("%q step %d: unexpected problems: %v", tc.Description, si+1, d.Problems)
			}
			desired[node], sims[node] = d, sim
		}
		oracle := model.Oracle(mode == policy.ModeDeny)
		jobs, err := c.probes(step.Probe)
		if err != nil {
			t.Fatal(err)
		}
		peers := map[*testPod]map[ruleset.Family]*matcher.TrafficPeer{}
		for _, p := range c.pods {
			peers[p] = map[ruleset.Family]*matcher.TrafficPeer{}
			for _, f := range ruleset.Families() {
				peers[p][f] = model.Peer(model.Pod(p.ns, p.name), p.addr(f).String())
			}
		}
		var mismatches []string
		for _, j := range jobs {
			for _, f := range ruleset.Families() {
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
			policies, _ := yaml.Marshal(model.OraclePolicies(mode == policy.ModeDeny))
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
