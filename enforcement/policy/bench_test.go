package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const localPods = 110

// syntheticCluster builds a cluster of nPods pods over nNS namespaces, with
// nPolicies policies of every kind (pod, namespace and ipBlock peers, named
// and numeric ports, ranges, both directions, deny-alls). 110 pods, spread
// over the namespaces, are on node-1; the others on 49 other nodes. Every
// other pod is dual-stack.
func syntheticCluster(nPods, nNS, nPolicies int) *testCluster {
	c := newTestCluster()
	envs := []string{"prod", "dev", "staging"}
	for i := range nNS {
		c.setNamespace(fmt.Sprintf("ns-%02d", i), map[string]string{
			"team": fmt.Sprintf("team-%d", i%5),
			"env":  envs[i%3],
		})
	}
	every := max(nPods/localPods, 1)
	tiers := []string{"web", "api", "db"}
	for i := range nPods {
		ns := fmt.Sprintf("ns-%02d", i%nNS)
		p := &testPod{
			ns:   ns,
			name: fmt.Sprintf("pod-%04d", i),
			labels: map[string]string{
				"app":     fmt.Sprintf("app-%d", (i/nNS)%5),
				"tier":    tiers[i%3],
				"version": fmt.Sprintf("v%d", i%4),
			},
			v4:   netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)}),
			node: fmt.Sprintf("node-%d", 2+i%49),
			ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: int32(8080 + i%3), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			},
		}
		if i%2 == 0 {
			p.v6 = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
		}
		if i%every == 0 && i/every < localPods {
			p.node = "node-1"
		}
		c.pods = append(c.pods, p)
	}
	for i := range nPolicies {
		c.policies = append(c.policies, syntheticPolicy(i, nNS, fmt.Sprintf("ns-%02d", i%nNS)))
	}
	return c
}

// addRemoteCopies adds n pods on a remote node, labelled like the existing
// ones (cycled), with fresh addresses.
func (c *testCluster) addRemoteCopies(n int) {
	orig := len(c.pods)
	for i := range n {
		src := c.pods[i%orig]
		j := orig + i
		c.pods = append(c.pods, &testPod{
			ns: src.ns, name: fmt.Sprintf("copy-%05d", i), labels: src.labels,
			v4:   netip.AddrFrom4([4]byte{10, 96 + byte(j>>16), byte(j >> 8), byte(j)}),
			v6:   netip.AddrFrom16([16]byte{0xfd, 0x99, 14: byte(j >> 8), 15: byte(j)}),
			node: "node-99", ports: src.ports,
		})
	}
}

// syntheticPolicy i lives in namespace ns; policies of one namespace spread
// over the apps, so a pod is typically selected by a few of them.
func syntheticPolicy(i, nNS int, ns string) *networkingv1.NetworkPolicy {
	app := (i / nNS) % 5
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p intstr.IntOrString) *intstr.IntOrString { return &p }
	labels := func(kv ...string) *metav1.LabelSelector {
		m := map[string]string{}
		for j := 0; j+1 < len(kv); j += 2 {
			m[kv[j]] = kv[j+1]
		}
		return &metav1.LabelSelector{MatchLabels: m}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("policy-%04d", i)},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *labels("app", fmt.Sprintf("app-%d", app))},
	}
	s := &np.Spec
	ingress := networkingv1.PolicyTypeIngress
	egress := networkingv1.PolicyTypeEgress
	switch i % 8 {
	case 0:
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: labels("app", fmt.Sprintf("app-%d", (app+1)%5))}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: port(intstr.FromInt32(8080))}},
		}}
	case 1:
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: labels("team", fmt.Sprintf("team-%d", i%5)),
				PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "api"}},
				}},
			}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: port(intstr.FromString("http"))}},
		}}
	case 2:
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
				CIDR: "10.64.0.0/12", Except: []string{fmt.Sprintf("10.64.%d.0/24", i%256)},
			}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: port(intstr.FromInt32(53))}},
		}}
	case 3:
		s.PolicyTypes = []networkingv1.PolicyType{egress}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: labels("env", "prod")}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: port(intstr.FromString("http"))}},
		}}
	case 4:
		end := int32(6000)
		s.PolicyTypes = []networkingv1.PolicyType{egress}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "version", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"v0"}},
			}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: port(intstr.FromInt32(5000)), EndPort: &end}},
		}}
	case 5:
		s.PolicyTypes = []networkingv1.PolicyType{ingress, egress}
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Port: port(intstr.FromInt32(9090))}},
		}}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "::/0", Except: []string{"fd00::/8"}}},
			},
		}}
	case 6:
		s.PodSelector = metav1.LabelSelector{}
		s.PolicyTypes = []networkingv1.PolicyType{ingress}
	case 7:
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: labels("version", "v1")}},
			Ports: []networkingv1.NetworkPolicyPort{
				{Port: port(intstr.FromInt32(8080))}, {Port: port(intstr.FromInt32(8081))},
				{Port: port(intstr.FromInt32(8082))}, {Protocol: &udp, Port: port(intstr.FromInt32(53))},
			},
		}}
	}
	return np
}

// BenchmarkCompile compiles the scale: 5,000 pods in the cluster,
// 110 on this node, 1,000 policies.
func BenchmarkCompile(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	in := c.input(policy.ModeDeny, "node-1")
	var d *policy.Desired
	for b.Loop() {
		var err error
		if d, err = policy.Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	if len(d.Pods) != localPods || len(d.Problems) > 0 {
		b.Fatalf("want %d local pods and no problems, got %d and %v", localPods, len(d.Pods), d.Problems)
	}
	st := d.Stats()
	b.ReportMetric(float64(len(d.Pods)), "local-pods")
	b.ReportMetric(float64(st.Chains), "chains")
	b.ReportMetric(float64(st.Rules), "rules")
	b.ReportMetric(float64(st.Sets), "sets")
	b.ReportMetric(float64(st.SetEntries), "set-entries")
}

// TestCompileAtScale keeps the benchmark's input honest and fast.
func TestCompileAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test")
	}
	c := syntheticCluster(5000, 50, 1000)
	d, sim := compileNode(t, c, policy.ModeDeny, "node-1")
	if len(d.Pods) != localPods || len(d.Problems) > 0 {
		t.Fatalf("want %d local pods and no problems, got %d and %v", localPods, len(d.Pods), d.Problems)
	}
	_ = sim
	t.Logf("scale: %+v", d.Stats())
}
