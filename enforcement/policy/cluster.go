package policy

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// podInfo is what the compiler needs of a pod.
type podInfo struct {
	ref    ruleset.Ref
	labels labels.Set
	ips    []netip.Addr // sorted, at most one per family in practice
	ports  []containerPort
	node   string
	// peer says whether the pod's addresses may appear in peer sets: a
	// finished pod's address may already belong to someone else, and a
	// host-network pod's address is the node's.
	peer bool
}

type containerPort struct {
	name  string
	proto corev1.Protocol
	port  uint16
}

func (p *podInfo) addrs(f ruleset.Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.ips {
		if ruleset.FamilyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}

// namedPort resolves a port name on this pod for a protocol. A name that
// the pod serves on another protocol does not resolve.
func (p *podInfo) namedPort(name string, proto corev1.Protocol) []uint16 {
	var out []uint16
	for _, cp := range p.ports {
		if cp.name == name && cp.proto == proto {
			out = append(out, cp.port)
		}
	}
	return out
}

// cluster indexes namespaces and pods.
type cluster struct {
	nsLabels   map[string]labels.Set
	namespaces []string // every namespace with an object or a pod, sorted
	pods       []*podInfo
	byRef      map[ruleset.Ref]*podInfo
	byNS       map[string][]*podInfo
	problems   []ruleset.Problem
}

// newCluster indexes the objects; derive makes a pod's podInfo (newPodInfo,
// or a Cache's copy of what it made before).
func newCluster(namespaces []corev1.Namespace, pods []corev1.Pod, derive func(*corev1.Pod) (*podInfo, []ruleset.Problem)) *cluster {
	c := &cluster{
		nsLabels: map[string]labels.Set{},
		pods:     make([]*podInfo, 0, len(pods)),
		byRef:    make(map[ruleset.Ref]*podInfo, len(pods)),
		byNS:     map[string][]*podInfo{},
	}
	for i := range namespaces {
		ns := &namespaces[i]
		if _, dup := c.nsLabels[ns.Name]; dup {
			c.problem("Namespace", "", ns.Name, fmt.Errorf("listed more than once; the first one counts"))
			continue
		}
		c.nsLabels[ns.Name] = namespaceLabels(ns.Name, ns.Labels)
	}
	for i := range pods {
		c.addPod(&pods[i], derive)
	}
	for ns := range c.byNS {
		if _, ok := c.nsLabels[ns]; !ok {
			c.nsLabels[ns] = namespaceLabels(ns, nil)
		}
	}
	for ns := range c.nsLabels {
		c.namespaces = append(c.namespaces, ns)
	}
	slices.Sort(c.namespaces)
	slices.SortFunc(c.pods, func(a, b *podInfo) int { return compareRef(a.ref, b.ref) })
	for _, ps := range c.byNS {
		slices.SortFunc(ps, func(a, b *podInfo) int { return compareRef(a.ref, b.ref) })
	}
	return c
}

// namespaceLabels adds the label the API server puts on every namespace, so
// that selecting kubernetes.io/metadata.name works even when the objects
// come from files.
func namespaceLabels(name string, l map[string]string) labels.Set {
	out := make(labels.Set, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	out[corev1.LabelMetadataName] = name
	return out
}

func (c *cluster) problem(kind, ns, name string, err error) {
	c.problems = append(c.problems, ruleset.Problem{Kind: kind, Namespace: ns, Name: name, Err: err})
}

func (c *cluster) addPod(pod *corev1.Pod, derive func(*corev1.Pod) (*podInfo, []ruleset.Problem)) {
	ref := ruleset.Ref{Namespace: pod.Namespace, Name: pod.Name}
	if ref.Namespace == "" {
		ref.Namespace = corev1.NamespaceDefault
	}
	if _, dup := c.byRef[ref]; dup {
		c.problem("Pod", ref.Namespace, ref.Name, fmt.Errorf("listed more than once; the first one counts"))
		return
	}
	p, problems := derive(pod)
	c.problems = append(c.problems, problems...)
	c.pods = append(c.pods, p)
	c.byRef[ref] = p
	c.byNS[ref.Namespace] = append(c.byNS[ref.Namespace], p)
}

// newPodInfo derives what the compiler needs of a pod from the pod alone.
func newPodInfo(pod *corev1.Pod) (*podInfo, []ruleset.Problem) {
	ref := ruleset.Ref{Namespace: pod.Namespace, Name: pod.Name}
	if ref.Namespace == "" {
		ref.Namespace = corev1.NamespaceDefault
	}
	var problems []ruleset.Problem
	p := &podInfo{
		ref:    ref,
		labels: labels.Set(pod.Labels),
		node:   pod.Spec.NodeName,
		peer: !pod.Spec.HostNetwork &&
			pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed,
	}
	if p.labels == nil {
		p.labels = labels.Set{}
	}
	ips := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			problems = append(problems, ruleset.Problem{Kind: "Pod", Namespace: ref.Namespace, Name: ref.Name,
				Err: fmt.Errorf("status.podIPs: invalid address %q, ignored", s)})
			continue
		}
		p.ips = append(p.ips, a.Unmap())
	}
	slices.SortFunc(p.ips, netip.Addr.Compare)
	p.ips = slices.Compact(p.ips)
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			p.ports = append(p.ports, containerPort{name: cp.Name, proto: proto, port: uint16(cp.ContainerPort)})
		}
	}
	return p, problems
}

// podsSelectedBy returns the pods a pod peer selects, in order. Pods that
// may not be peers are left out.
func (c *cluster) podsSelectedBy(pp *podPeer) []*podInfo {
	var out []*podInfo
	add := func(ns string) {
		for _, p := range c.byNS[ns] {
			if p.peer && pp.podSel.matches(p.labels) {
				out = append(out, p)
			}
		}
	}
	if pp.namespace != "" {
		add(pp.namespace)
		return out
	}
	for _, ns := range c.namespaces {
		if pp.allNamespaces || pp.nsSel.matches(c.nsLabels[ns]) {
			add(ns)
		}
	}
	return out
}

func compareRef(a, b ruleset.Ref) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}
