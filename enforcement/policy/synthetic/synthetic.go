// Package synthetic generates a large, varied cluster (namespaces, pods and
// NetworkPolicies of every kind) for podwall's scale tests and benchmarks,
// and writes it as manifests for the agent's policy dir.
package synthetic

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// LocalNode is the node that LocalPods of the pods are scheduled on; the
// others spread over 49 remote nodes.
const (
	LocalNode = "node-1"
	LocalPods = 110
)

// Pod is one generated pod.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	V4, V6          netip.Addr // V6 is invalid for single-stack pods
	Node            string
	Ports           []corev1.ContainerPort
}

// Local reports whether the pod is scheduled on LocalNode.
func (p Pod) Local() bool { return p.Node == LocalNode }

// NamespaceName is the name of namespace i.
func NamespaceName(i int) string { return fmt.Sprintf("ns-%02d", i) }

// NamespaceLabels are the labels of namespace i (without the API server's
// kubernetes.io/metadata.name).
func NamespaceLabels(i int) map[string]string {
	envs := []string{"prod", "dev", "staging"}
	return map[string]string{"team": fmt.Sprintf("team-%d", i%5), "env": envs[i%3]}
}

// Pods generates nPods pods over nNS namespaces; LocalPods of them, spread
// over the namespaces, are on LocalNode. Every other pod is dual-stack.
func Pods(nPods, nNS int) []Pod {
	every := max(nPods/LocalPods, 1)
	tiers := []string{"web", "api", "db"}
	out := make([]Pod, 0, nPods)
	for i := range nPods {
		p := Pod{
			Namespace: NamespaceName(i % nNS),
			Name:      fmt.Sprintf("pod-%04d", i),
			Labels: map[string]string{
				"app":     fmt.Sprintf("app-%d", (i/nNS)%5),
				"tier":    tiers[i%3],
				"version": fmt.Sprintf("v%d", i%4),
			},
			V4:   netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)}),
			Node: fmt.Sprintf("node-%d", 2+i%49),
			Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: int32(8080 + i%3), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			},
		}
		if i%2 == 0 {
			p.V6 = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
		}
		if i%every == 0 && i/every < LocalPods {
			p.Node = LocalNode
		}
		out = append(out, p)
	}
	return out
}

// Policies generates nPolicies policies spread over nNS namespaces.
func Policies(nPolicies, nNS int) []networkingv1.NetworkPolicy {
	out := make([]networkingv1.NetworkPolicy, 0, nPolicies)
	for i := range nPolicies {
		out = append(out, *Policy(i, nNS, NamespaceName(i%nNS)))
	}
	return out
}

// Policy i lives in namespace ns; the policies of one namespace spread over
// the apps, so a pod is typically selected by a few of them. i%8 picks the
// kind: pod, namespace+pod and ipBlock peers, named and numeric ports,
// port ranges, both directions, deny-alls.
func Policy(i, nNS int, ns string) *networkingv1.NetworkPolicy {
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
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
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
