package policy_test

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/iptsim"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// randomCluster is a small cluster that random steps change the way a
// cluster and a node change: namespaces x, y, z, w with pods a to d, some
// of them on this node (node-1) and attached, and policies drawn from a
// few that select by pod and namespace labels, named ports and ipBlocks.
type randomCluster struct {
	r          *rand.Rand
	serial     int
	namespaces map[string]map[string]string
	pods       map[ruleset.Ref]*randomPod
	policies   map[ruleset.Ref]*networkingv1.NetworkPolicy
	keys       map[ruleset.Ref]string
	podIPs     map[ruleset.Ref][]netip.Addr
	log        []string
}

type randomPod struct {
	labels map[string]string
	ips    []string
	node   string
	phase  corev1.PodPhase
}

var (
	randomNamespaces = []string{"x", "y", "z", "w"}
	randomPodNames   = []string{"a", "b", "c", "d"}
	randomPodLabels  = []map[string]string{nil, {"pod": "a"}, {"pod": "b"}, {"pod": "c"}, {"pod": "c", "role": "db"}, {"role": "db"}, {"role": "web"}}
	randomNSLabels   = []map[string]string{nil, {"team": "a"}, {"team": "b"}, {"team": "a", "env": "prod"}}
)

// randomPolicies include the two of the wrong allow of issue 9 (y/p1 and
// x/p2).
var randomPolicies = []string{
	`metadata: {namespace: "y", name: p1}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports: [{protocol: TCP, port: 80, endPort: 82}]`,
	`metadata: {namespace: x, name: p2}
spec:
  podSelector: {}
  policyTypes: [Ingress]`,
	`metadata: {namespace: x, name: p3}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]`,
	`metadata: {namespace: z, name: p4}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]
  egress:
  - to: [{podSelector: {matchLabels: {role: web}}}]
    ports: [{port: http}]`,
	`metadata: {namespace: "y", name: p5}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
  - ports: [{port: http, protocol: TCP}]`,
	`metadata: {namespace: w, name: p6}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {role: db}}}]
    ports: [{port: http}]`,
	`metadata: {namespace: x, name: p7}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {}}]`,
	`metadata: {namespace: "y", name: p8}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.2.0.0/16}}, {namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]`,
}

func newRandomCluster(seed uint64) *randomCluster {
	m := &randomCluster{r: rand.New(rand.NewPCG(seed, 9)), namespaces: map[string]map[string]string{},
		pods: map[ruleset.Ref]*randomPod{}, policies: map[ruleset.Ref]*networkingv1.NetworkPolicy{},
		keys: map[ruleset.Ref]string{}, podIPs: map[ruleset.Ref][]netip.Addr{}}
	for i, ns := range randomNamespaces {
		m.namespaces[ns] = m.pick(randomNSLabels)
		for _, name := range randomPodNames[:3] {
			ref := ruleset.Ref{Namespace: ns, Name: name}
			m.pods[ref] = m.newPod(i)
			if m.pods[ref].node == "node-1" {
				m.attach(ref)
			}
		}
	}
	return m
}

func (m *randomCluster) pick(labels []map[string]string) map[string]string {
	return labels[m.r.IntN(len(labels))]
}

func (m *randomCluster) newPod(nsIndex int) *randomPod {
	p := &randomPod{labels: m.pick(randomPodLabels), ips: []string{fmt.Sprintf("10.%d.0.%d", nsIndex, m.r.IntN(200)+1)},
		node: "node-1", phase: corev1.PodRunning}
	if m.r.IntN(3) == 0 {
		p.node = "node-2"
	}
	return p
}

func (m *randomCluster) attach(ref ruleset.Ref) {
	m.serial++
	m.keys[ref] = policy.ChainKey("net", ref.Namespace, ref.Name, strconv.Itoa(m.serial))
	if m.r.IntN(2) == 0 {
		m.podIPs[ref] = []netip.Addr{netip.AddrFrom4([4]byte{100, 64, 0, byte(m.r.IntN(250) + 1)})}
	}
}

func (m *randomCluster) somePod() ruleset.Ref {
	refs := slices.SortedFunc(func(yield func(ruleset.Ref) bool) {
		for ref := range m.pods {
			if !yield(ref) {
				return
			}
		}
	}, compareRefs)
	if len(refs) == 0 || m.r.IntN(8) == 0 {
		return ruleset.Ref{Namespace: "x", Name: "ghost"}
	}
	return refs[m.r.IntN(len(refs))]
}

func compareRefs(a, b ruleset.Ref) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func (m *randomCluster) logf(format string, args ...any) {
	m.log = append(m.log, fmt.Sprintf(format, args...))
}

// step makes one random change.
func (m *randomCluster) step(t *testing.T) {
	switch m.r.IntN(10) {
	case 0:
		if ref := m.somePod(); m.pods[ref] != nil {
			m.pods[ref].labels = m.pick(randomPodLabels)
			m.logf("pod %s relabelled %v", ref, m.pods[ref].labels)
		}
	case 1:
		ns := randomNamespaces[m.r.IntN(len(randomNamespaces))]
		m.namespaces[ns] = m.pick(randomNSLabels)
		m.logf("namespace %s labelled %v", ns, m.namespaces[ns])
	case 2:
		i := m.r.IntN(len(randomNamespaces))
		ref := ruleset.Ref{Namespace: randomNamespaces[i], Name: randomPodNames[m.r.IntN(len(randomPodNames))]}
		if m.pods[ref] != nil {
			delete(m.pods, ref)
			m.logf("pod %s removed", ref)
		} else {
			m.pods[ref] = m.newPod(i)
			m.logf("pod %s added", ref)
		}
	case 3, 4:
		np := mustPolicy(t, randomPolicies[m.r.IntN(len(randomPolicies))])
		ref := ruleset.Ref{Namespace: np.Namespace, Name: np.Name}
		if m.policies[ref] != nil && m.r.IntN(2) == 0 {
			delete(m.policies, ref)
			m.logf("policy %s removed", ref)
			return
		}
		if m.r.IntN(3) == 0 {
			np.Spec.Ingress = nil
		}
		m.policies[ref] = np
		m.logf("policy %s put", ref)
	case 5:
		ref := m.somePod()
		if _, ok := m.keys[ref]; ok {
			delete(m.keys, ref)
			delete(m.podIPs, ref)
			m.logf("%s detached", ref)
		} else {
			m.attach(ref)
			m.logf("%s attached, IPs %v", ref, m.podIPs[ref])
		}
	case 6:
		if ref := m.somePod(); m.keys[ref] != "" {
			m.podIPs[ref] = []netip.Addr{netip.AddrFrom4([4]byte{100, 64, 1, byte(m.r.IntN(250) + 1)})}
			m.logf("%s reported IPs %v", ref, m.podIPs[ref])
		}
	case 7:
		ns := randomNamespaces[m.r.IntN(len(randomNamespaces))]
		if _, ok := m.namespaces[ns]; ok {
			delete(m.namespaces, ns)
			m.logf("namespace %s removed", ns)
		}
	case 8:
		if ref := m.somePod(); m.pods[ref] != nil {
			m.pods[ref].ips = []string{fmt.Sprintf("10.9.0.%d", m.r.IntN(250)+1)}
			m.logf("pod %s has IPs %v", ref, m.pods[ref].ips)
		}
	case 9:
		if ref := m.somePod(); m.pods[ref] != nil {
			m.pods[ref].phase = []corev1.PodPhase{corev1.PodRunning, corev1.PodSucceeded, corev1.PodPending}[m.r.IntN(3)]
			m.logf("pod %s is %s", ref, m.pods[ref].phase)
		}
	}
}

// input lists the objects in a random order when shuffle is set, as an
// informer's cache does.
func (m *randomCluster) input(mode policy.Mode, shuffle bool) policy.Input {
	in := policy.Input{Node: "node-1", Mode: mode, ChainKeys: map[ruleset.Ref]string{}, PodIPs: map[ruleset.Ref][]netip.Addr{}}
	for ns, l := range m.namespaces {
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: l}})
	}
	for ref, p := range m.pods {
		pod := corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name, Labels: p.labels},
			Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
			Status:     corev1.PodStatus{Phase: p.phase},
		}
		for _, ip := range p.ips {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		in.Pods = append(in.Pods, pod)
	}
	for _, np := range m.policies {
		in.Policies = append(in.Policies, *np)
	}
	for ref, k := range m.keys {
		in.ChainKeys[ref] = k
	}
	for ref, ips := range m.podIPs {
		in.PodIPs[ref] = ips
	}
	if shuffle {
		m.r.Shuffle(len(in.Namespaces), func(i, j int) { in.Namespaces[i], in.Namespaces[j] = in.Namespaces[j], in.Namespaces[i] })
		m.r.Shuffle(len(in.Pods), func(i, j int) { in.Pods[i], in.Pods[j] = in.Pods[j], in.Pods[i] })
		m.r.Shuffle(len(in.Policies), func(i, j int) { in.Policies[i], in.Policies[j] = in.Policies[j], in.Policies[i] })
		return in
	}
	slices.SortFunc(in.Namespaces, func(a, b corev1.Namespace) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(in.Pods, func(a, b corev1.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(in.Policies, func(a, b networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return in
}

// Random sequences of changes (pods and namespaces relabelled, added and
// removed, policies added, updated and removed, attachments added and
// removed, addresses changed), compiled through a cache told what
// changed, give what a full compilation gives at every step; so do
// changes reported that changed nothing, and changes not known.
func TestCacheThroughRandomChanges(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 40
	}
	for seed := range uint64(seeds) {
		mode := []policy.Mode{policy.ModeKubernetes, policy.ModeDeny}[seed%2]
		shuffle := seed%4 < 2
		m := newRandomCluster(seed)
		var inputs []policy.Input
		for i := range 30 {
			if i > 0 {
				m.step(t)
			}
			inputs = append(inputs, m.input(mode, shuffle))
		}
		// A source may report an object that did not change, and may not
		// know.
		extra := func(ch *changes.Set) {
			switch m.r.IntN(12) {
			case 0:
				ch.Pod(randomNamespaces[m.r.IntN(4)], randomPodNames[m.r.IntN(4)])
			case 1:
				ch.Namespace(randomNamespaces[m.r.IntN(4)])
			case 2:
				ch.Policy("x", "p2")
			case 3:
				ch.Attachment(ruleset.Ref{Namespace: "y", Name: "a"})
			case 4:
				ch.MarkUnknown()
			}
		}
		compileSteps(t, inputs, extra, func(i int) string {
			return fmt.Sprintf("seed %d (%s, shuffled %t), step %d after:\n%v", seed, mode, shuffle, i, m.log[:i])
		})
	}
}

// The sequence of issue 9's wrong allow, in kubernetes mode: y/p1 opens
// TCP 80-82 to every pod of y, x/p2 isolates x; then x is relabelled, then
// x/c. A UDP/80 probe from z to x/b or y/b must be dropped at every step,
// compiled through the cache as without.
func TestCacheIssue9Sequence(t *testing.T) {
	c := newTestCluster()
	for i, ns := range []string{"x", "y", "z"} {
		c.setNamespace(ns, map[string]string{"ns": ns})
		for j, name := range []string{"a", "b", "c"} {
			c.addPod(ns, name, map[string]string{"pod": name}, fmt.Sprintf("10.0.%d.%d", i, j+1), "", ports("serve-80-udp=80/UDP serve-80-tcp=80/TCP"))
		}
	}
	c.policies = append(c.policies, mustPolicy(t, randomPolicies[0]), mustPolicy(t, randomPolicies[1]))
	inputs := []policy.Input{c.input(policy.ModeKubernetes, "node-1")}
	c.setNamespace("x", map[string]string{"ns": "x", "new-ns": "qrs"})
	inputs = append(inputs, c.input(policy.ModeKubernetes, "node-1"))
	c.pod("x", "c").labels = map[string]string{"pod": "c", "new-pod": "abc"}
	inputs = append(inputs, c.input(policy.ModeKubernetes, "node-1"))
	compileSteps(t, inputs, nil, func(i int) string { return fmt.Sprintf("step %d", i+1) })

	cache := policy.NewCache()
	for i, in := range inputs {
		ch := changes.Rebuild()
		if i > 0 {
			ch = changesBetween(inputs[i-1], in)
		}
		d, err := cache.Compile(in, ch)
		if err != nil {
			t.Fatal(err)
		}
		sim, err := iptsim.New(d)
		if err != nil {
			t.Fatal(err)
		}
		w := &world{t: t, c: c, desired: map[string]*ruleset.Desired{"node-1": d}, sims: map[string]*iptsim.Simulator{"node-1": sim}}
		w.expect(ruleset.IPv4,
			expectation{"z/b", "x/b", "UDP/80", false},
			expectation{"z/c", "y/b", "UDP/80", false},
			expectation{"z/c", "y/b", "TCP/80", true},
			expectation{"x/a", "z/a", "UDP/80", true},
		)
	}
}
