package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Compile computes the ipsets and chains that enforce the policies for the
// node's attached pods. Objects that cannot be compiled as written are
// reported in Desired.Problems and handled fail-closed (see the package
// documentation); the error is only for input that makes the whole result
// meaningless, such as an unknown mode.
func Compile(in Input) (*ruleset.Desired, error) {
	c, err := newCompiler(in)
	if err != nil {
		return nil, err
	}
	return c.compile(in, nil)
}

// compiler holds what is derived from the input's objects. Compile makes
// one per compilation; a Cache keeps one and patches it (see Cache).
type compiler struct {
	mode     Mode
	cluster  *cluster
	policies *policyIndex
	// selections are the pods each pod peer selects, by peer key, made
	// when a set's members are first needed.
	selections map[string]*peerSelection
	// members are those of the sets filled so far, by set name.
	members map[string]setMembers
	// compiled holds what each attachment compiled to, by memoKey.
	compiled map[string]*compiledAttachment

	// Of the compilation under way.
	sets     *setRegistry
	problems []ruleset.Problem
}

// peerSelection is the pods a peer selects, sorted by ref.
type peerSelection struct {
	peer *podPeer
	pods []*podInfo
}

// compiledAttachment is what compileAttachment produced for one
// attachment and the sets it registered on the way.
type compiledAttachment struct {
	pods     []ruleset.LocalPod
	chains   []ruleset.Chain
	problems []ruleset.Problem
	sets     []*pendingSet
}

func newCompiler(in Input) (*compiler, error) {
	mode, err := ParseMode(string(in.Mode))
	if err != nil {
		return nil, err
	}
	return &compiler{
		mode:       mode,
		cluster:    newCluster(in.Namespaces, in.Pods, in.PodIPs),
		policies:   newPolicyIndex(in.Policies),
		selections: map[string]*peerSelection{},
		members:    map[string]setMembers{},
		compiled:   map[string]*compiledAttachment{},
	}, nil
}

// compile renders the output. An attachment compiled before is compiled
// again only when recompile (nil: never) says that what it depends on
// changed.
func (c *compiler) compile(in Input, recompile func(attachment) bool) (*ruleset.Desired, error) {
	c.sets = newSetRegistry(c.members)
	c.problems = append(c.cluster.problems(), c.policies.problems()...)
	d := &ruleset.Desired{}
	attachments := c.attachments(in)
	compiled := make(map[string]*compiledAttachment, len(attachments))
	for _, att := range attachments {
		ca := c.compiled[att.memoKey()]
		if ca != nil && (recompile == nil || !recompile(att)) {
			for _, ps := range ca.sets {
				if err := c.sets.adopt(ps); err != nil {
					return nil, err
				}
			}
			c.problems = append(c.problems, ca.problems...)
		} else {
			problems := len(c.problems)
			c.sets.used = nil
			lp, chains, err := c.compileAttachment(att)
			if err != nil {
				return nil, err
			}
			ca = &compiledAttachment{pods: lp, chains: chains,
				problems: slices.Clone(c.problems[problems:]), sets: c.sets.used}
		}
		compiled[att.memoKey()] = ca
		d.Pods = append(d.Pods, ca.pods...)
		d.Chains = append(d.Chains, ca.chains...)
	}
	c.compiled = compiled
	d.Pending = c.pending(in, attachments)
	d.Sets = c.sets.finish(c)
	slices.SortFunc(d.Chains, func(a, b ruleset.Chain) int {
		return cmp.Or(cmp.Compare(a.Family, b.Family), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(d.Pods, func(a, b ruleset.LocalPod) int { return compareRef(a.Pod, b.Pod) })
	d.Problems = c.problems
	slices.SortStableFunc(d.Problems, func(a, b ruleset.Problem) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Err.Error(), b.Err.Error()))
	})
	c.sets, c.problems = nil, nil
	return d, nil
}

func (c *compiler) problem(kind string, ref ruleset.Ref, err error) {
	c.problems = append(c.problems, ruleset.Problem{Kind: kind, Namespace: ref.Namespace, Name: ref.Name, Err: err})
}

// policyIndex holds the parsed policies.
type policyIndex struct {
	byRef map[ruleset.Ref]*parsedPolicy
	byNS  map[string][]*parsedPolicy // sorted by ref
	// invalid reports the invalid policies; duplicates, what listing one
	// twice did.
	invalid    map[ruleset.Ref]ruleset.Problem
	duplicates []ruleset.Problem
}

func newPolicyIndex(policies []networkingv1.NetworkPolicy) *policyIndex {
	x := &policyIndex{byRef: make(map[ruleset.Ref]*parsedPolicy, len(policies)), byNS: map[string][]*parsedPolicy{},
		invalid: map[ruleset.Ref]ruleset.Problem{}}
	for i := range policies {
		ref := policyRef(&policies[i])
		if _, dup := x.byRef[ref]; dup {
			x.duplicates = append(x.duplicates, ruleset.Problem{Kind: "NetworkPolicy", Namespace: ref.Namespace, Name: ref.Name, Err: errListedTwice})
			continue
		}
		x.add(parsePolicy(&policies[i]))
	}
	for _, ps := range x.byNS {
		slices.SortFunc(ps, comparePolicies)
	}
	return x
}

func policyRef(np *networkingv1.NetworkPolicy) ruleset.Ref { return objectRef(np.Namespace, np.Name) }

func comparePolicies(a, b *parsedPolicy) int { return compareRef(a.ref, b.ref) }

// add indexes a policy by ref, leaving byNS unsorted.
func (x *policyIndex) add(p *parsedPolicy) {
	x.byRef[p.ref] = p
	x.byNS[p.ref.Namespace] = append(x.byNS[p.ref.Namespace], p)
	if p.err != nil {
		x.invalid[p.ref] = ruleset.Problem{Kind: "NetworkPolicy", Namespace: p.ref.Namespace, Name: p.ref.Name,
			Err: fmt.Errorf("invalid, so it allows nothing but still isolates the pods it selects: %w", p.err)}
	}
}

func (x *policyIndex) find(ref ruleset.Ref) (int, bool) {
	return slices.BinarySearchFunc(x.byNS[ref.Namespace], ref, func(p *parsedPolicy, r ruleset.Ref) int { return compareRef(p.ref, r) })
}

// replace puts the policy (nil: none) in the place of the one of that ref.
func (x *policyIndex) replace(ref ruleset.Ref, np *networkingv1.NetworkPolicy) {
	if i, found := x.find(ref); found {
		x.byNS[ref.Namespace] = slices.Delete(x.byNS[ref.Namespace], i, i+1)
	}
	delete(x.byRef, ref)
	delete(x.invalid, ref)
	if np != nil {
		// add appends; a namespace holds few policies.
		x.add(parsePolicy(np))
		slices.SortFunc(x.byNS[ref.Namespace], comparePolicies)
	}
	if len(x.byNS[ref.Namespace]) == 0 {
		delete(x.byNS, ref.Namespace)
	}
}

func (x *policyIndex) problems() []ruleset.Problem {
	out := slices.Clone(x.duplicates)
	for _, p := range x.invalid {
		out = append(out, p)
	}
	return out
}

// attachment is one chain key and the pods that claim it: normally one.
type attachment struct {
	key  string
	refs []ruleset.Ref
}

// memoKey names an attachment's compilation: its key and its pods.
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

func (c *compiler) attachments(in Input) []attachment {
	byKey := map[string][]ruleset.Ref{}
	for ref, key := range in.ChainKeys {
		ref = objectRef(ref.Namespace, ref.Name)
		if err := ValidateChainKey(key); err != nil {
			c.problem("ChainKey", ref, fmt.Errorf("no chains: %w", err))
			continue
		}
		byKey[key] = append(byKey[key], ref)
		if p := c.cluster.byRef[ref]; p != nil && in.Node != "" && p.node != "" && p.node != in.Node {
			c.problem("ChainKey", ref, fmt.Errorf("pod is scheduled on node %q but attached here (%q); enforcing here", p.node, in.Node))
		}
	}
	out := make([]attachment, 0, len(byKey))
	for key, refs := range byKey {
		slices.SortFunc(refs, compareRef)
		out = append(out, attachment{key: key, refs: refs})
	}
	slices.SortFunc(out, func(a, b attachment) int { return strings.Compare(a.key, b.key) })
	return out
}

// pending lists the pods scheduled here that have no usable chain key.
func (c *compiler) pending(in Input, attachments []attachment) []ruleset.Ref {
	if in.Node == "" {
		return nil
	}
	keyed := map[ruleset.Ref]bool{}
	for _, att := range attachments {
		for _, ref := range att.refs {
			keyed[ref] = true
		}
	}
	var out []ruleset.Ref
	for _, p := range c.cluster.pods {
		if p.node == in.Node && !keyed[p.ref] {
			out = append(out, p.ref)
		}
	}
	return out
}

func (c *compiler) compileAttachment(att attachment) ([]ruleset.LocalPod, []ruleset.Chain, error) {
	inName, outName, err := ChainNames(att.key)
	if err != nil {
		return nil, nil, err
	}
	var pods []ruleset.LocalPod
	for _, ref := range att.refs {
		lp := ruleset.LocalPod{Pod: ref, Key: att.key, IngressChain: inName, EgressChain: outName}
		if p := c.cluster.byRef[ref]; p != nil {
			lp.IPs = slices.Clone(p.ips)
		}
		pods = append(pods, lp)
	}
	owner := att.refs[0]
	if len(att.refs) > 1 {
		for _, ref := range att.refs {
			c.problem("ChainKey", ref, fmt.Errorf("chain key %s is claimed by %d pods; all their traffic is dropped", att.key, len(att.refs)))
		}
	}
	var chains []ruleset.Chain
	for _, f := range ruleset.Families() {
		for _, dir := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
			name := inName
			if dir == ruleset.Egress {
				name = outName
			}
			var rules []ruleset.Rule
			if len(att.refs) > 1 {
				rules = []ruleset.Rule{withComment(nil, fmt.Sprintf("%s %s: chain key shared by %d pods, drop all", owner, dir, len(att.refs)), TargetDeny)}
			} else {
				rules, err = c.podRules(owner, c.cluster.byRef[owner], f, dir)
				if err != nil {
					return nil, nil, err
				}
			}
			chains = append(chains, ruleset.Chain{Family: f, Name: name, Pod: owner, Direction: dir, Rules: rules})
		}
	}
	return pods, chains, nil
}

// podRules is the chain of one pod, one family, one direction.
func (c *compiler) podRules(ref ruleset.Ref, pod *podInfo, f ruleset.Family, dir ruleset.Direction) ([]ruleset.Rule, error) {
	who := ref.String() + " " + string(dir)
	if pod == nil {
		return []ruleset.Rule{withComment(nil, who+": pod unknown to the policy engine, drop all", TargetDeny)}, nil
	}
	if len(pod.addrs(f)) == 0 {
		return []ruleset.Rule{withComment(nil, fmt.Sprintf("%s: pod has no %s address, drop all %s", who, f, f), TargetDeny)}, nil
	}
	var selecting []*parsedPolicy
	for _, p := range c.policies.byNS[ref.Namespace] {
		if p.affects(dir) && p.podSel.matches(pod.labels) {
			selecting = append(selecting, p)
		}
	}
	if len(selecting) == 0 {
		if c.mode == ModeKubernetes {
			return []ruleset.Rule{withComment(nil, who+": no policy selects this pod, allow all (kubernetes mode)", TargetAllow)}, nil
		}
		return []ruleset.Rule{withComment(nil, who+": no policy selects this pod, default deny (deny mode)", TargetDeny)}, nil
	}
	var out []ruleset.Rule
	seen := map[string]bool{}
	for _, p := range selecting {
		rules, err := c.policyRules(who, pod, f, dir, p)
		if err != nil {
			return nil, err
		}
		if len(rules) == 0 {
			why := "allows nothing here"
			if p.err != nil {
				why = "is invalid and allows nothing"
			}
			// A rule without a target changes nothing; it shows who
			// isolates the pod.
			rules = []ruleset.Rule{withComment(nil, fmt.Sprintf("%s: isolated by %s, which %s", who, p.ref, why), "")}
		}
		for _, r := range rules {
			k := strings.Join(r, "\x00")
			if !seen[k] {
				seen[k] = true
				out = append(out, r)
			}
		}
	}
	out = append(out, withComment(nil, fmt.Sprintf("%s: default deny (selected by %s)", who, policyList(selecting)), TargetDeny))
	return out, nil
}

func policyList(ps []*parsedPolicy) string {
	const shown = 3
	names := make([]string, 0, shown)
	for i, p := range ps {
		if i == shown {
			return strings.Join(names, ", ") + fmt.Sprintf(" and %d more", len(ps)-shown)
		}
		names = append(names, p.ref.String())
	}
	return strings.Join(names, ", ")
}

// peerMatch is the peer part of a rule; nil args match any peer.
type peerMatch struct {
	args []string
	desc string
}

// policyRules renders what one policy allows for one pod, in rule order.
func (c *compiler) policyRules(who string, pod *podInfo, f ruleset.Family, dir ruleset.Direction, p *parsedPolicy) ([]ruleset.Rule, error) {
	flag, preposition, anyone := "src", "from", "any source"
	if dir == ruleset.Egress {
		flag, preposition, anyone = "dst", "to", "any destination"
	}
	var out []ruleset.Rule
	for _, r := range p.rules(dir) {
		label := fmt.Sprintf("%s: allowed by %s rule %d %s ", who, p.ref, r.number, preposition)

		ports, named := c.rulePorts(pod, dir, r)
		if !r.anyPort && len(ports) == 0 && len(named) == 0 {
			continue // only named ports, and none resolves: allows nothing
		}

		var peers []peerMatch
		if r.anyPeer {
			peers = []peerMatch{{desc: anyone}}
		}
		for _, pe := range r.peers {
			if len(ports) == 0 {
				break // only named egress ports, which have sets of their own
			}
			var name, desc string
			var err error
			switch {
			case pe.pods != nil:
				name, err = c.podSet(pe.pods, f)
				desc = pe.pods.desc
			case pe.block.family() == f:
				name, err = c.cidrSet(pe.block)
				desc = pe.block.desc
			default:
				continue // an ipBlock of the other family matches nothing here
			}
			if err != nil {
				return nil, err
			}
			peers = append(peers, peerMatch{args: []string{"-m", "set", "--match-set", name, flag}, desc: desc})
		}

		for _, pm := range peers {
			for _, port := range ports {
				var args []string
				if port.proto != "" {
					args = append(args, "-p", port.proto)
				}
				args = append(args, pm.args...)
				args = append(args, port.args...)
				out = append(out, withComment(args, label+pm.desc, TargetAllow))
			}
		}

		for _, np := range named {
			sets, err := c.namedPortPeers(r, np, f)
			if err != nil {
				return nil, err
			}
			for _, s := range sets {
				args := []string{"-m", "set", "--match-set", s.args[0], "dst,dst"}
				out = append(out, withComment(args, label+s.desc, TargetAllow))
			}
		}
	}
	return out, nil
}

// rulePorts splits a rule's ports into matches on numbers and, for egress,
// the named ports that must be resolved on each destination. Ingress named
// ports resolve on the pod itself. With no ports at all it returns one
// match for anything.
func (c *compiler) rulePorts(pod *podInfo, dir ruleset.Direction, r parsedRule) ([]portMatch, []portSpec) {
	if r.anyPort {
		return []portMatch{{}}, nil
	}
	anyPort := map[corev1.Protocol]bool{}
	ranges := map[corev1.Protocol][]portRange{}
	var named []portSpec
	for _, ps := range r.ports {
		switch {
		case ps.anyPort:
			anyPort[ps.proto] = true
		case ps.name == "":
			ranges[ps.proto] = append(ranges[ps.proto], portRange{ps.first, ps.last})
		case dir == ruleset.Ingress:
			for _, n := range pod.namedPort(ps.name, ps.proto) {
				ranges[ps.proto] = append(ranges[ps.proto], portRange{n, n})
			}
		default:
			named = append(named, ps)
		}
	}
	// A named port is covered when its protocol is open on every port.
	named = slices.DeleteFunc(named, func(ps portSpec) bool { return anyPort[ps.proto] })
	slices.SortFunc(named, func(a, b portSpec) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.name, b.name))
	})
	named = slices.Compact(named)
	return portMatches(anyPort, ranges), named
}

// namedPortPeers returns, for an egress named port, one hash:ip,port set per
// peer of the rule (args[0] is the set name).
func (c *compiler) namedPortPeers(r parsedRule, np portSpec, f ruleset.Family) ([]peerMatch, error) {
	suffix := " on port " + np.String()
	if r.anyPeer {
		name, err := c.namedPortSet(allPodsPeer(), nil, np, f)
		if err != nil {
			return nil, err
		}
		return []peerMatch{{args: []string{name}, desc: "any pod" + suffix}}, nil
	}
	var out []peerMatch
	for _, pe := range r.peers {
		var name, desc string
		var err error
		switch {
		case pe.pods != nil:
			name, err = c.namedPortSet(pe.pods, nil, np, f)
			desc = pe.pods.desc
		case pe.block.family() == f:
			name, err = c.namedPortSet(nil, pe.block, np, f)
			desc = "pods in " + pe.block.desc
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, peerMatch{args: []string{name}, desc: desc + suffix})
	}
	return out, nil
}

// selected is the pods a pod peer selects, computed once per peer content.
func (c *compiler) selected(pp *podPeer) []*podInfo {
	if s, ok := c.selections[pp.key]; ok {
		return s.pods
	}
	pods := c.cluster.podsSelectedBy(pp)
	c.selections[pp.key] = &peerSelection{peer: pp, pods: pods}
	return pods
}

func (c *compiler) allPeerPods() []*podInfo { return c.selected(allPodsPeer()) }
