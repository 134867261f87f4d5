package policy

import (
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// A Cache also keeps what the last compilation derived from its objects as
// a whole, in two parts that change independently:
//
//   - clusterMemo, from the namespaces and pods: the indexed cluster, the
//     pods each peer selects, and the members of each set (a set's name
//     stands for its content, which the policies define, and its members
//     come from the cluster alone);
//   - policiesMemo, from the policies and the mode: the parsed policies and
//     each attachment's chains. An attachment's chains depend on nothing
//     else but the podInfo of its pod (labels, addresses, ports): which
//     policies select it, and the names of the sets its rules match, never
//     their members.
//
// So an attachment coming or going costs the compilation of that
// attachment alone, and a few pods changing (a pod attached here getting
// its addresses) cost patching the cluster (see patchCluster) and filling
// the sets again, not the chains of every local pod.
//
// Objects are recognised as the same by namespace, name and
// resourceVersion, in order, and pods by their addresses too (the agent
// replaces them without a new resourceVersion); an object without a
// resourceVersion means that part is derived anew.
type clusterMemo struct {
	namespaces []objectKey
	pods       []podIdentity

	cluster  *cluster
	selCache map[string][]*podInfo
	// members of the sets filled so far, by set name.
	members map[string][]string
}

type policiesMemo struct {
	mode     Mode
	policies []objectKey

	parsed   []*parsedPolicy
	byNS     map[string][]*parsedPolicy
	problems []ruleset.Problem
	// attachments compiled by the last compilation, by memoKey.
	attachments map[string]*compiledAttachment
}

// podIdentity is what makes two pods derive the same podInfo (see podKey),
// kept without joining the addresses into a string.
type podIdentity struct {
	objectKey
	podIP  string
	podIPs []string
}

// compiledAttachment is what compileAttachment produced for one attachment
// and everything it registered on the way. It holds for another
// compilation with the same policies and mode whose pods of the attachment
// have the same podInfo (a Cache hands out one podInfo per pod version).
type compiledAttachment struct {
	owners   []*podInfo // the podInfo of each ref, nil when unknown
	pods     []ruleset.LocalPod
	chains   []ruleset.Chain
	problems []ruleset.Problem
	sets     []*pendingSet
}

func (a attachment) memoKey() string {
	var b strings.Builder
	b.WriteString(a.key)
	for _, r := range a.refs {
		b.WriteByte('\x00')
		b.WriteString(r.Namespace)
		b.WriteByte('/')
		b.WriteString(r.Name)
	}
	return b.String()
}

func (ca *compiledAttachment) holdsFor(c *compiler, att attachment) bool {
	if len(ca.owners) != len(att.refs) {
		return false
	}
	for i, ref := range att.refs {
		if c.cluster.byRef[ref] != ca.owners[i] {
			return false
		}
	}
	return true
}

func ownersOf(c *compiler, att attachment) []*podInfo {
	out := make([]*podInfo, len(att.refs))
	for i, ref := range att.refs {
		out[i] = c.cluster.byRef[ref]
	}
	return out
}

// clusterIdentity records the identity of the input's namespaces and pods;
// ok is false when one has no resourceVersion.
func clusterIdentity(in Input) (namespaces []objectKey, pods []podIdentity, ok bool) {
	namespaces = make([]objectKey, len(in.Namespaces))
	for i := range in.Namespaces {
		ns := &in.Namespaces[i]
		if ns.ResourceVersion == "" {
			return nil, nil, false
		}
		namespaces[i] = objectKey{ns.Namespace, ns.Name, ns.ResourceVersion}
	}
	pods = make([]podIdentity, len(in.Pods))
	for i := range in.Pods {
		p := &in.Pods[i]
		if p.ResourceVersion == "" {
			return nil, nil, false
		}
		pods[i] = identityOf(p)
	}
	return namespaces, pods, true
}

func (m *clusterMemo) matches(in Input) bool {
	if m == nil || len(in.Namespaces) != len(m.namespaces) || len(in.Pods) != len(m.pods) {
		return false
	}
	for i := range in.Namespaces {
		ns := &in.Namespaces[i]
		if ns.ResourceVersion == "" || (objectKey{ns.Namespace, ns.Name, ns.ResourceVersion}) != m.namespaces[i] {
			return false
		}
	}
	for i := range in.Pods {
		if !m.pods[i].is(&in.Pods[i]) {
			return false
		}
	}
	return true
}

func (id *podIdentity) is(p *corev1.Pod) bool {
	if p.ResourceVersion == "" || p.ResourceVersion != id.version || p.Name != id.name || p.Namespace != id.namespace ||
		p.Status.PodIP != id.podIP || len(p.Status.PodIPs) != len(id.podIPs) {
		return false
	}
	for i, ip := range p.Status.PodIPs {
		if ip.IP != id.podIPs[i] {
			return false
		}
	}
	return true
}

// policiesIdentity records the identity of the input's policies; ok is
// false when one has no resourceVersion.
func policiesIdentity(in Input) ([]objectKey, bool) {
	out := make([]objectKey, len(in.Policies))
	for i := range in.Policies {
		k, ok := policyKey(&in.Policies[i])
		if !ok {
			return nil, false
		}
		out[i] = k
	}
	return out, true
}

func (m *policiesMemo) matches(in Input, mode Mode) bool {
	if m == nil || m.mode != mode || len(in.Policies) != len(m.policies) {
		return false
	}
	for i := range in.Policies {
		if k, ok := policyKey(&in.Policies[i]); !ok || k != m.policies[i] {
			return false
		}
	}
	return true
}

// memoCompiler returns a compiler for in, reusing what the cache holds of
// the same namespaces and pods, and of the same policies; what it derives
// anew (object by object through the cache) it remembers. The returned
// memo (nil when the policies cannot be recognised) receives the
// attachments compiled. Call it holding the cache's lock.
func (c *Cache) memoCompiler(in Input, mode Mode) (*compiler, *policiesMemo) {
	comp := &compiler{mode: mode, sets: newSetRegistry()}
	if m := c.cluster; m.matches(in) {
		comp.cluster, comp.selCache = m.cluster, m.selCache
		comp.sets.members = m.members
	} else if next, ok := c.patchCluster(in); ok {
		c.cluster = next
		comp.cluster, comp.selCache = next.cluster, next.selCache
		comp.sets.members = next.members
	} else {
		u := &usage{pods: make(map[podKey]*cachedPod, len(in.Pods))}
		comp.cluster = newCluster(in.Namespaces, in.Pods, func(p *corev1.Pod) (*podInfo, []ruleset.Problem) { return c.pod(u, p) })
		comp.selCache = map[string][]*podInfo{}
		c.pods = u.pods
		c.cluster = nil
		if namespaces, pods, ok := clusterIdentity(in); ok {
			c.cluster = &clusterMemo{namespaces: namespaces, pods: pods, cluster: comp.cluster, selCache: comp.selCache, members: map[string][]string{}}
			comp.sets.members = c.cluster.members
		}
	}
	comp.problems = append(comp.problems, comp.cluster.problems...)

	if m := c.policiesMemo; m.matches(in, mode) {
		comp.policies, comp.byNS = m.parsed, m.byNS
		comp.problems = append(comp.problems, m.problems...)
		return comp, m
	}
	u := &usage{policies: map[objectKey]*parsedPolicy{}}
	comp.byNS = map[string][]*parsedPolicy{}
	before := len(comp.problems)
	comp.parsePolicies(in, func(np *networkingv1.NetworkPolicy) *parsedPolicy { return c.parsed(u, np) })
	c.policies = u.policies
	c.policiesMemo = nil
	if keys, ok := policiesIdentity(in); ok {
		c.policiesMemo = &policiesMemo{mode: mode, policies: keys, parsed: comp.policies, byNS: comp.byNS,
			problems: append([]ruleset.Problem(nil), comp.problems[before:]...)}
	}
	return comp, c.policiesMemo
}

// maxPatched is how many changed pods patchCluster handles; more are
// indexed anew.
const maxPatched = 8

// patchCluster handles the common change of a few pods (a pod attached
// here gets its addresses, a pod's status or labels change) without
// indexing the whole cluster again: when the namespaces are the same and
// the pods are the same ones in the same order, the last cluster is copied
// with the changed pods' podInfo replaced. The pods each peer selects and
// the sets' members are computed anew. Anything unusual (a changed pod
// with problems, duplicate pods, a pod without resourceVersion, many
// changes) says no, and the cluster is indexed anew.
func (c *Cache) patchCluster(in Input) (*clusterMemo, bool) {
	m := c.cluster
	if m == nil || len(in.Namespaces) != len(m.namespaces) || len(in.Pods) != len(m.pods) || len(m.cluster.byRef) != len(m.pods) {
		return nil, false
	}
	for i := range in.Namespaces {
		ns := &in.Namespaces[i]
		if ns.ResourceVersion == "" || (objectKey{ns.Namespace, ns.Name, ns.ResourceVersion}) != m.namespaces[i] {
			return nil, false
		}
	}
	type change struct {
		i        int
		ref      ruleset.Ref
		oldKey   podKey
		newKey   podKey
		old, new *cachedPod
	}
	var changes []change
	for i := range in.Pods {
		p, id := &in.Pods[i], &m.pods[i]
		if p.Namespace != id.namespace || p.Name != id.name {
			return nil, false
		}
		if id.is(p) {
			continue
		}
		if len(changes) == maxPatched {
			return nil, false
		}
		newKey, ok := keyOfPod(p)
		if !ok {
			return nil, false
		}
		ch := change{i: i, ref: ruleset.Ref{Namespace: p.Namespace, Name: p.Name}, oldKey: id.key(), newKey: newKey}
		if ch.ref.Namespace == "" {
			ch.ref.Namespace = corev1.NamespaceDefault
		}
		ch.old = c.pods[ch.oldKey]
		if ch.old == nil || ch.old.info != m.cluster.byRef[ch.ref] || len(ch.old.problems) > 0 {
			return nil, false
		}
		if ch.new = c.pods[newKey]; ch.new == nil {
			info, problems := newPodInfo(p)
			ch.new = &cachedPod{info: info, problems: problems}
		}
		if len(ch.new.problems) > 0 {
			return nil, false
		}
		changes = append(changes, ch)
	}
	if len(changes) == 0 {
		return nil, false
	}

	old := m.cluster
	cl := &cluster{
		nsLabels: old.nsLabels, namespaces: old.namespaces, problems: old.problems,
		pods: slices.Clone(old.pods), byRef: maps.Clone(old.byRef), byNS: maps.Clone(old.byNS),
	}
	next := &clusterMemo{namespaces: m.namespaces, pods: slices.Clone(m.pods), cluster: cl,
		selCache: map[string][]*podInfo{}, members: map[string][]string{}}
	cloned := map[string]bool{}
	for _, ch := range changes {
		was, now := ch.old.info, ch.new.info
		cl.byRef[ch.ref] = now
		replacePod(cl.pods, was, now)
		if !cloned[ch.ref.Namespace] {
			cl.byNS[ch.ref.Namespace] = slices.Clone(cl.byNS[ch.ref.Namespace])
			cloned[ch.ref.Namespace] = true
		}
		replacePod(cl.byNS[ch.ref.Namespace], was, now)
		next.pods[ch.i] = identityOf(&in.Pods[ch.i])
		delete(c.pods, ch.oldKey)
		c.pods[ch.newKey] = ch.new
	}
	return next, true
}

func replacePod(pods []*podInfo, was, now *podInfo) {
	for i, p := range pods {
		if p == was {
			pods[i] = now
			return
		}
	}
}

// key is the podKey of the pod the identity was taken from.
func (id *podIdentity) key() podKey {
	var ips strings.Builder
	for _, ip := range id.podIPs {
		ips.WriteString(ip)
		ips.WriteByte(',')
	}
	return podKey{id.objectKey, id.podIP, ips.String()}
}

func identityOf(p *corev1.Pod) podIdentity {
	id := podIdentity{objectKey: objectKey{p.Namespace, p.Name, p.ResourceVersion}, podIP: p.Status.PodIP}
	for _, ip := range p.Status.PodIPs {
		id.podIPs = append(id.podIPs, ip.IP)
	}
	return id
}
