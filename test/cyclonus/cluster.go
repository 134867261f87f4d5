// Package cyclonus replays the test cases of cyclonus' generator
// (github.com/mattfenwick/cyclonus) on a model of their cluster and judges
// connections with cyclonus' matcher. It knows nothing of podwall: the pure
// conformance test of the policy compiler and the real-packet conformance
// test both build on it.
package cyclonus

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cyclonus cluster: namespaces x, y, z with pods a, b, c, each serving
// ports 80 and 81 over TCP, UDP and SCTP under cyclonus' port names.
var (
	Namespaces = []string{"x", "y", "z"}
	PodNames   = []string{"a", "b", "c"}
	Protocols  = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	Ports      = []int32{80, 81}
)

// CaseCount is how many test cases cyclonus v0.5.6 generates.
const CaseCount = 230

// DenyModePolicy names the deny-all policy that stands for podwall's deny
// mode in every namespace.
const DenyModePolicy = "podwall-deny-mode"

// ContainerPorts are the ports every pod serves, named as cyclonus names them.
func ContainerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range Ports {
		for _, proto := range Protocols {
			out = append(out, corev1.ContainerPort{
				Name:          fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))),
				ContainerPort: port,
				Protocol:      proto,
			})
		}
	}
	return out
}

// Cases returns every test case of cyclonus' generator, whatever tags its
// CLI would exclude by default; podIP is z/c's address, from which the
// generator derives its ipBlock peers.
func Cases(allowDNS bool, podIP string) ([]*generator.TestCase, error) {
	gen := generator.NewTestCaseGenerator(allowDNS, podIP, Namespaces, nil, nil)
	cases := gen.GenerateAllTestCases()
	if n := len(gen.GenerateTestCases()); n != len(cases) {
		return nil, fmt.Errorf("generator with no tag filter gives %d cases, all cases are %d", n, len(cases))
	}
	return cases, nil
}

// Pod is a pod of the model.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
}

// Cluster is the state cyclonus' steps act on.
type Cluster struct {
	NamespaceLabels map[string]map[string]string
	Pods            []*Pod
	Policies        []*networkingv1.NetworkPolicy
}

// NewCluster returns the cluster every cyclonus case starts from.
func NewCluster() *Cluster {
	c := &Cluster{NamespaceLabels: map[string]map[string]string{}}
	for _, ns := range Namespaces {
		c.setNamespace(ns, map[string]string{"ns": ns})
		for _, name := range PodNames {
			c.Pods = append(c.Pods, &Pod{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}})
		}
	}
	return c
}

// Clone returns a deep copy: a test can keep the state it put in the API
// server apart from the state a case moves on to.
func (c *Cluster) Clone() *Cluster {
	out := &Cluster{NamespaceLabels: map[string]map[string]string{}}
	for ns, labels := range c.NamespaceLabels {
		out.NamespaceLabels[ns] = maps.Clone(labels)
	}
	for _, p := range c.Pods {
		out.Pods = append(out.Pods, &Pod{Namespace: p.Namespace, Name: p.Name, Labels: maps.Clone(p.Labels)})
	}
	for _, p := range c.Policies {
		out.Policies = append(out.Policies, p.DeepCopy())
	}
	return out
}

// SortedNamespaces lists the namespaces in name order.
func (c *Cluster) SortedNamespaces() []string {
	return slices.Sorted(maps.Keys(c.NamespaceLabels))
}

func (c *Cluster) setNamespace(ns string, labels map[string]string) {
	l := maps.Clone(labels)
	if l == nil {
		l = map[string]string{}
	}
	// The API server keeps this label on every namespace.
	l[corev1.LabelMetadataName] = ns
	c.NamespaceLabels[ns] = l
}

// Pod returns the pod ns/name, or nil.
func (c *Cluster) Pod(ns, name string) *Pod {
	i := slices.IndexFunc(c.Pods, func(p *Pod) bool { return p.Namespace == ns && p.Name == name })
	if i < 0 {
		return nil
	}
	return c.Pods[i]
}

func (c *Cluster) policyIndex(ns, name string) int {
	return slices.IndexFunc(c.Policies, func(p *networkingv1.NetworkPolicy) bool {
		return p.Namespace == ns && p.Name == name
	})
}

// Apply performs one cyclonus action, as cyclonus' TestCaseState does.
func (c *Cluster) Apply(a *generator.Action) error {
	switch {
	case a.CreatePolicy != nil:
		p := a.CreatePolicy.Policy
		if c.policyIndex(p.Namespace, p.Name) >= 0 {
			return fmt.Errorf("create policy %s/%s: exists", p.Namespace, p.Name)
		}
		c.Policies = append(c.Policies, p.DeepCopy())
	case a.UpdatePolicy != nil:
		p := a.UpdatePolicy.Policy
		i := c.policyIndex(p.Namespace, p.Name)
		if i < 0 {
			return fmt.Errorf("update policy %s/%s: not found", p.Namespace, p.Name)
		}
		c.Policies[i] = p.DeepCopy()
	case a.DeletePolicy != nil:
		i := c.policyIndex(a.DeletePolicy.Namespace, a.DeletePolicy.Name)
		if i < 0 {
			return fmt.Errorf("delete policy %s/%s: not found", a.DeletePolicy.Namespace, a.DeletePolicy.Name)
		}
		c.Policies = slices.Delete(c.Policies, i, i+1)
	case a.CreateNamespace != nil:
		if _, ok := c.NamespaceLabels[a.CreateNamespace.Namespace]; ok {
			return fmt.Errorf("create namespace %s: exists", a.CreateNamespace.Namespace)
		}
		c.setNamespace(a.CreateNamespace.Namespace, a.CreateNamespace.Labels)
	case a.SetNamespaceLabels != nil:
		if _, ok := c.NamespaceLabels[a.SetNamespaceLabels.Namespace]; !ok {
			return fmt.Errorf("set labels of namespace %s: not found", a.SetNamespaceLabels.Namespace)
		}
		c.setNamespace(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels)
	case a.DeleteNamespace != nil:
		ns := a.DeleteNamespace.Namespace
		if _, ok := c.NamespaceLabels[ns]; !ok {
			return fmt.Errorf("delete namespace %s: not found", ns)
		}
		delete(c.NamespaceLabels, ns)
		c.Pods = slices.DeleteFunc(c.Pods, func(p *Pod) bool { return p.Namespace == ns })
		c.Policies = slices.DeleteFunc(c.Policies, func(p *networkingv1.NetworkPolicy) bool { return p.Namespace == ns })
	case a.CreatePod != nil:
		ns, name := a.CreatePod.Namespace, a.CreatePod.Pod
		if _, ok := c.NamespaceLabels[ns]; !ok {
			return fmt.Errorf("create pod %s/%s: no namespace", ns, name)
		}
		if c.Pod(ns, name) != nil {
			return fmt.Errorf("create pod %s/%s: exists", ns, name)
		}
		c.Pods = append(c.Pods, &Pod{Namespace: ns, Name: name, Labels: maps.Clone(a.CreatePod.Labels)})
	case a.SetPodLabels != nil:
		p := c.Pod(a.SetPodLabels.Namespace, a.SetPodLabels.Pod)
		if p == nil {
			return fmt.Errorf("set labels of pod %s/%s: not found", a.SetPodLabels.Namespace, a.SetPodLabels.Pod)
		}
		p.Labels = maps.Clone(a.SetPodLabels.Labels)
	case a.DeletePod != nil:
		n := len(c.Pods)
		c.Pods = slices.DeleteFunc(c.Pods, func(p *Pod) bool {
			return p.Namespace == a.DeletePod.Namespace && p.Name == a.DeletePod.Pod
		})
		if len(c.Pods) == n {
			return fmt.Errorf("delete pod %s/%s: not found", a.DeletePod.Namespace, a.DeletePod.Pod)
		}
	default:
		return fmt.Errorf("unsupported action %+v", a)
	}
	return nil
}

// OpenPolicies allow all ingress and egress of every pod in the given
// namespaces. In deny mode almost every cyclonus case denies everything,
// which proves little; with these in the cluster (for the agent and the
// matcher alike) the opened namespaces let the cases' policies and the
// agent's own default decide what the others get.
func OpenPolicies(namespaces ...string) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, ns := range namespaces {
		out = append(out, &networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: OpenPolicy},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
				Egress:      []networkingv1.NetworkPolicyEgressRule{{}},
			},
		})
	}
	return out
}

// OpenPolicy names the policies of OpenPolicies.
const OpenPolicy = "podwall-test-open"

// DenyAll is the deny-all Ingress+Egress policy of one namespace that
// stands for podwall's deny mode.
func DenyAll(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: DenyModePolicy},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}

// OraclePolicies are the policies cyclonus' matcher judges by: the
// cluster's, with policyTypes defaulted as the API server does, plus, with
// denyMode, a deny-all Ingress+Egress policy in every namespace.
func (c *Cluster) OraclePolicies(denyMode bool) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, p := range c.Policies {
		p = p.DeepCopy()
		if len(p.Spec.PolicyTypes) == 0 {
			p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(p.Spec.Egress) > 0 {
				p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
			}
		}
		out = append(out, p)
	}
	if denyMode {
		for _, ns := range c.SortedNamespaces() {
			out = append(out, DenyAll(ns))
		}
	}
	return out
}

// Oracle builds cyclonus' matcher over OraclePolicies.
func (c *Cluster) Oracle(denyMode bool) *matcher.Policy {
	return matcher.BuildNetworkPolicies(true, c.OraclePolicies(denyMode))
}

// Peer describes a pod with the given address to the matcher.
func (c *Cluster) Peer(p *Pod, ip string) *matcher.TrafficPeer {
	return &matcher.TrafficPeer{
		IP: ip,
		Internal: &matcher.InternalPeer{
			PodLabels:       p.Labels,
			NamespaceLabels: c.NamespaceLabels[p.Namespace],
			Namespace:       p.Namespace,
		},
	}
}

// Target is one port of a destination pod that a step probes.
type Target struct {
	Port     int
	PortName string
	Protocol corev1.Protocol
}

// Targets lists what a probe config tries on a destination serving ports,
// the way cyclonus' JobBuilder does; a port the destination does not serve
// is left out, as cyclonus leaves it out of its table.
func Targets(pc *generator.ProbeConfig, ports []corev1.ContainerPort) ([]Target, error) {
	var out []Target
	switch {
	case pc.AllAvailable:
		for _, cp := range ports {
			out = append(out, Target{int(cp.ContainerPort), cp.Name, cp.Protocol})
		}
	case pc.PortProtocol != nil:
		pp := pc.PortProtocol
		for _, cp := range ports {
			if (pp.Port.Type == intstr.String && cp.Name == pp.Port.StrVal) || (pp.Port.Type == intstr.Int && cp.ContainerPort == pp.Port.IntVal) {
				out = append(out, Target{int(cp.ContainerPort), cp.Name, pp.Protocol})
				break
			}
		}
	default:
		return nil, fmt.Errorf("unsupported probe config %+v", pc)
	}
	return out, nil
}
