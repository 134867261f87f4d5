package policy

import (
	"errors"
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
	// statusIPs are the addresses the pod's status gives, and
	// statusProblems what was wrong with them. ips are statusIPs unless
	// replaced (see Input.PodIPs).
	statusIPs      []netip.Addr
	statusProblems []ruleset.Problem
	replaced       bool
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

// cluster indexes namespaces and pods. A Cache keeps one between
// compilations and patches it for the objects a change set names.
type cluster struct {
	// nsObjects are the labels of the namespaces that have an object, as
	// namespaceSelectors see them.
	nsObjects map[string]labels.Set
	// nsLabels are those of every namespace with an object or a pod: a
	// namespace known only from its pods has only its name label.
	nsLabels   map[string]labels.Set
	namespaces []string // the keys of nsLabels, sorted
	pods       []*podInfo
	byRef      map[ruleset.Ref]*podInfo
	byNS       map[string][]*podInfo
	// podProblems are what deriving each pod reported, for the few pods
	// that have some; duplicates, what listing an object twice did.
	podProblems map[ruleset.Ref][]ruleset.Problem
	duplicates  []ruleset.Problem
}

// newCluster indexes the objects. podIPs replaces the addresses of the
// pods it names (see Input.PodIPs).
func newCluster(namespaces []corev1.Namespace, pods []corev1.Pod, podIPs map[ruleset.Ref][]netip.Addr) *cluster {
	c := &cluster{
		nsObjects:   make(map[string]labels.Set, len(namespaces)),
		nsLabels:    make(map[string]labels.Set, len(namespaces)),
		pods:        make([]*podInfo, 0, len(pods)),
		byRef:       make(map[ruleset.Ref]*podInfo, len(pods)),
		byNS:        map[string][]*podInfo{},
		podProblems: map[ruleset.Ref][]ruleset.Problem{},
	}
	for i := range namespaces {
		ns := &namespaces[i]
		if _, dup := c.nsObjects[ns.Name]; dup {
			c.duplicates = append(c.duplicates, ruleset.Problem{Kind: "Namespace", Name: ns.Name, Err: errListedTwice})
			continue
		}
		c.nsObjects[ns.Name] = namespaceLabels(ns.Name, ns.Labels)
		c.nsLabels[ns.Name] = c.nsObjects[ns.Name]
	}
	for i := range pods {
		pod := &pods[i]
		ref := podRef(pod)
		if _, dup := c.byRef[ref]; dup {
			c.duplicates = append(c.duplicates, ruleset.Problem{Kind: "Pod", Namespace: ref.Namespace, Name: ref.Name, Err: errListedTwice})
			continue
		}
		p := newPodInfo(pod).withIPs(podIPs, ref)
		c.pods = append(c.pods, p)
		c.byRef[ref] = p
		c.byNS[ref.Namespace] = append(c.byNS[ref.Namespace], p)
		if problems := p.problems(); len(problems) > 0 {
			c.podProblems[ref] = problems
		}
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
	slices.SortFunc(c.pods, comparePods)
	for _, ps := range c.byNS {
		slices.SortFunc(ps, comparePods)
	}
	return c
}

var errListedTwice = errors.New("listed more than once; the first one counts")

// objectRef names a namespaced object; one without a namespace is in the
// default namespace, as the API server has it.
func objectRef(namespace, name string) ruleset.Ref {
	if namespace == "" {
		namespace = corev1.NamespaceDefault
	}
	return ruleset.Ref{Namespace: namespace, Name: name}
}

func podRef(pod *corev1.Pod) ruleset.Ref { return objectRef(pod.Namespace, pod.Name) }

func comparePods(a, b *podInfo) int { return compareRef(a.ref, b.ref) }

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

// problems lists what the cluster reports.
func (c *cluster) problems() []ruleset.Problem {
	out := slices.Clone(c.duplicates)
	for _, ps := range c.podProblems {
		out = append(out, ps...)
	}
	return out
}

// setNamespace records the namespace's object (nil: it has none), and
// whether the namespace still exists.
func (c *cluster) setNamespace(name string, ns *corev1.Namespace) {
	if ns != nil {
		c.nsObjects[name] = namespaceLabels(name, ns.Labels)
	} else {
		delete(c.nsObjects, name)
	}
	c.syncNamespace(name)
}

// syncNamespace makes nsLabels and namespaces agree with the namespace's
// object and pods.
func (c *cluster) syncNamespace(name string) {
	l, ok := c.nsObjects[name]
	if !ok && len(c.byNS[name]) > 0 {
		l, ok = namespaceLabels(name, nil), true
	}
	i, listed := slices.BinarySearch(c.namespaces, name)
	switch {
	case ok:
		c.nsLabels[name] = l
		if !listed {
			c.namespaces = slices.Insert(c.namespaces, i, name)
		}
	case listed:
		delete(c.nsLabels, name)
		c.namespaces = slices.Delete(c.namespaces, i, i+1)
	}
}

// replacePod puts now (nil: no pod) in the place of the pod of that ref.
func (c *cluster) replacePod(ref ruleset.Ref, now *podInfo) {
	if now != nil {
		c.byRef[ref] = now
	} else {
		delete(c.byRef, ref)
	}
	c.pods, _ = replaceSorted(c.pods, ref, now)
	c.byNS[ref.Namespace], _ = replaceSorted(c.byNS[ref.Namespace], ref, now)
	if len(c.byNS[ref.Namespace]) == 0 {
		delete(c.byNS, ref.Namespace)
	}
	delete(c.podProblems, ref)
	if now != nil {
		if problems := now.problems(); len(problems) > 0 {
			c.podProblems[ref] = problems
		}
	}
	c.syncNamespace(ref.Namespace)
}

// replaceSorted replaces, inserts or (now nil) deletes the pod of ref in
// pods sorted by ref, and returns whether it was there.
func replaceSorted(pods []*podInfo, ref ruleset.Ref, now *podInfo) ([]*podInfo, bool) {
	i, found := slices.BinarySearchFunc(pods, ref, func(p *podInfo, r ruleset.Ref) int { return compareRef(p.ref, r) })
	switch {
	case found && now != nil:
		pods[i] = now
	case found:
		pods = slices.Delete(pods, i, i+1)
	case now != nil:
		pods = slices.Insert(pods, i, now)
	}
	return pods, found
}

// newPodInfo derives what the compiler needs of a pod from the pod alone.
func newPodInfo(pod *corev1.Pod) *podInfo {
	ref := podRef(pod)
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
			p.statusProblems = append(p.statusProblems, ruleset.Problem{Kind: "Pod", Namespace: ref.Namespace, Name: ref.Name,
				Err: fmt.Errorf("status.podIPs: invalid address %q, ignored", s)})
			continue
		}
		p.statusIPs = append(p.statusIPs, a.Unmap())
	}
	slices.SortFunc(p.statusIPs, netip.Addr.Compare)
	p.statusIPs = slices.Compact(p.statusIPs)
	p.ips = p.statusIPs
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
	return p
}

// withIPs returns the pod with the addresses podIPs gives it, if any,
// instead of those of its status.
func (p *podInfo) withIPs(podIPs map[ruleset.Ref][]netip.Addr, ref ruleset.Ref) *podInfo {
	ips, replaced := podIPs[ref]
	if !replaced && !p.replaced {
		return p
	}
	out := *p
	out.ips, out.replaced = p.statusIPs, false
	if replaced {
		replacement := make([]netip.Addr, len(ips))
		for i, a := range ips {
			replacement[i] = a.Unmap()
		}
		slices.SortFunc(replacement, netip.Addr.Compare)
		out.ips, out.replaced = slices.Compact(replacement), true
	}
	return &out
}

// problems are what deriving the pod reported: its status' addresses,
// unless they were replaced.
func (p *podInfo) problems() []ruleset.Problem {
	if p.replaced {
		return nil
	}
	return p.statusProblems
}

// selects reports whether a pod peer selects the pod.
func (c *cluster) selects(pp *podPeer, p *podInfo) bool {
	return c.selectsNamespace(pp, p.ref.Namespace) && selectsPod(pp, p)
}

func (c *cluster) selectsNamespace(pp *podPeer, ns string) bool {
	if pp.namespace != "" {
		return ns == pp.namespace
	}
	return pp.allNamespaces || pp.nsSel.matches(c.nsLabels[ns])
}

// selectsPod is the peer's test of the pod itself. Pods that may not be
// peers are never selected.
func selectsPod(pp *podPeer, p *podInfo) bool { return p.peer && pp.podSel.matches(p.labels) }

// podsSelectedBy returns the pods a pod peer selects, in order.
func (c *cluster) podsSelectedBy(pp *podPeer) []*podInfo {
	var out []*podInfo
	namespaces := c.namespaces
	if pp.namespace != "" {
		namespaces = []string{pp.namespace}
	}
	for _, ns := range namespaces {
		if !c.selectsNamespace(pp, ns) {
			continue
		}
		for _, p := range c.byNS[ns] {
			if selectsPod(pp, p) {
				out = append(out, p)
			}
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
