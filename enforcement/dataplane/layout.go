package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

const (
	chainPrefix = ruleset.Prefix

	chainForward = chainPrefix + "FORWARD"
	chainInput   = chainPrefix + "INPUT"
	chainEgress  = chainPrefix + "EGRESS"
	chainIngress = chainPrefix + "INGRESS"
	// chainAntispoof holds, per pod, a drop of whatever arrives from the
	// pod's interface without a local pod's source address: only traffic
	// that no egress dispatch rule claimed is matched against it.
	chainAntispoof = chainPrefix + "ANTISPOOF"
	// chainMisaddressed holds, per pod, a drop of whatever leaves through
	// the pod's interface without one of its addresses as destination:
	// only traffic that no ingress dispatch rule claimed is matched
	// against it.
	chainMisaddressed = chainPrefix + "MISADDRESSED"

	// chainAdmit accepts what podwall's chains let through, recording in
	// the connection that it was judged under the current policy epoch.
	chainAdmit = chainPrefix + "ADMIT"
	// chainJudged records the current policy epoch in the connection's
	// mark, and returns. It holds that one rule.
	chainJudged = chainPrefix + "JUDGED"

	// markEgressPassed is set once a packet passed its source pod's egress
	// policy; PODWALL-FORWARD accepts it when no local pod's ingress claims it.
	markEgressPassed = "0x100000/0x100000"
)

// Policy epochs. A connection admitted once is not admitted for ever: its
// conntrack entry carries, in the bits epochMask of its mark, the epoch of
// the policy it was judged under, and only packets of the epoch in force
// skip the chains. Every write of podwall's chains or sets starts a new
// epoch, in the same transaction, so the next packet a connection sends
// in its original direction is judged again by the chains now in the
// kernel: a flow that the new policy denies stops, including a new UDP
// socket that reuses the 5-tuple of an entry admitted earlier. Replies
// still pass on the entry: they answer a packet that was admitted.
//
// The bits do not overlap markEgressPassed, so that a CONNMARK
// --restore-mark elsewhere cannot forge a pass.
const (
	epochMask  uint32 = 0xffe00000
	epochShift        = 21
	maxEpoch   uint32 = epochMask >> epochShift
)

// epochMark is the mark/mask of an epoch as iptables-save prints it.
func epochMark(epoch uint32) string {
	return fmt.Sprintf("0x%x/0x%x", epoch<<epochShift, epochMask)
}

// nextEpoch follows after; it wraps to 1 past maxEpoch (0 is no epoch:
// connections never judged under one).
func nextEpoch(after uint32) uint32 {
	if after >= maxEpoch {
		return 1
	}
	return after + 1
}

// epochRules are the rules that name the epoch, by chain: the shortcut of
// PODWALL-FORWARD and PODWALL-INPUT for connections judged under it, and
// the mark of PODWALL-JUDGED. They are the only rules that change when an
// epoch starts.
func epochRules(epoch uint32) map[string]ruleset.Rule {
	shortcut := func(target string) ruleset.Rule {
		return ruleset.Rule{"-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "connmark", "--mark", epochMark(epoch),
			"-m", "comment", "--comment", "podwall: established, judged under the current policy", "-j", target}
	}
	return map[string]ruleset.Rule{
		chainForward: shortcut("ACCEPT"),
		chainInput:   shortcut("RETURN"),
		chainJudged:  {"-m", "comment", "--comment", "podwall: judged under the current policy", "-j", "CONNMARK", "--set-xmark", epochMark(epoch)},
	}
}

// epochChains are the chains that hold an epoch rule, in the order their
// rules are written.
var epochChains = []string{chainForward, chainInput, chainJudged}

// epochRulePosition is where an epoch rule sits in its chain (1-based).
func epochRulePosition(chain string) int {
	if chain == chainJudged {
		return 1
	}
	return 3
}

func fromPodChain(key string) string { return chainPrefix + "F-" + key }
func toPodChain(key string) string   { return chainPrefix + "T-" + key }

func policyChains(key string) (in, out string) {
	return chainPrefix + "IN-" + key, chainPrefix + "OUT-" + key
}

// baseJumps are the only rules podwall puts in chains it does not own.
var baseJumps = []struct {
	builtin string
	args    []string
}{
	{"FORWARD", []string{"-m", "comment", "--comment", "podwall: pod traffic", "-j", chainForward}},
	{"INPUT", []string{"-m", "comment", "--comment", "podwall: pod traffic to the node", "-j", chainInput}},
}

// baseChains are created once; PODWALL-FORWARD, PODWALL-INPUT and
// PODWALL-JUDGED hold no pod rules and are rewritten whole when they
// differ from this, the others only get what is missing. Replies and
// connections judged under the current epoch are accepted before anything
// else: they are most packets, and they should cost a rule or two.
func baseChains(f ruleset.Family, epoch uint32) []baseChain {
	notClaimed := notClaimedRule()
	epochal := epochRules(epoch)
	// Neighbour discovery is link-local and comes from link-local or
	// unspecified sources, which no dispatch rule names; without it IPv6
	// does not work at all.
	var antispoof, misaddressed []ruleset.Rule
	if f == ruleset.IPv6 {
		antispoof, misaddressed = neighbourDiscovery("", "RETURN"), neighbourDiscovery("", "ACCEPT")
	}
	return []baseChain{
		{chainForward, []ruleset.Rule{
			{"-m", "conntrack", "--ctstate", "RELATED", "-m", "comment", "--comment", "podwall: related to an admitted connection", "-j", "ACCEPT"},
			{"-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "-m", "comment", "--comment", "podwall: reply of an admitted connection", "-j", "ACCEPT"},
			epochal[chainForward],
			{"-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", "podwall: drop invalid", "-j", "DROP"},
			{"-j", chainEgress},
			notClaimed,
			{"-j", chainIngress},
			{"-j", chainMisaddressed},
			{"-m", "mark", "--mark", markEgressPassed, "-m", "comment", "--comment", "podwall: egress allowed, destination not a local pod", "-j", chainAdmit},
			{"-m", "comment", "--comment", "podwall: no local pod involved", "-j", chainJudged},
		}},
		// Node -> pod is OUTPUT and never filtered (kubelet probes); pod ->
		// node passes the pod's egress policy here.
		{chainInput, []ruleset.Rule{
			{"-m", "conntrack", "--ctstate", "RELATED", "-j", "RETURN"},
			{"-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "-j", "RETURN"},
			epochal[chainInput],
			{"-j", chainEgress},
			notClaimed,
			{"-j", chainJudged},
		}},
		{chainJudged, []ruleset.Rule{epochal[chainJudged]}},
		{chainAdmit, []ruleset.Rule{{"-j", chainJudged}, {"-j", "ACCEPT"}}},
		{chainEgress, nil},
		{chainIngress, nil},
		{chainAntispoof, antispoof},
		{chainMisaddressed, misaddressed},
	}
}

// notClaimedRule sends what no pod's egress claimed to PODWALL-ANTISPOOF;
// older layouts lack it.
func notClaimedRule() ruleset.Rule {
	return ruleset.Rule{"-m", "mark", "!", "--mark", markEgressPassed, "-m", "comment", "--comment",
		"podwall: not claimed by the egress of a local pod; spoofed if from a pod interface", "-j", chainAntispoof}
}

type baseChain struct {
	name  string
	rules []ruleset.Rule
}

// rewrittenWhole says whether a base chain holds only base rules, so that
// it can be replaced when its content is not the current one.
func rewrittenWhole(name string) bool {
	return name == chainForward || name == chainInput || name == chainJudged || name == chainAdmit
}

// familyIPs returns the pod's addresses of one family.
func familyIPs(p Pod, f ruleset.Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.IPs {
		if a.Is4() == (f == ruleset.IPv4) {
			out = append(out, a)
		}
	}
	return out
}

func podRef(p Pod) string { return p.Namespace + "/" + p.Name }

// fromPodIface matches what arrives from the pod's host interface;
// physdev-in also works for bridged frames that are then routed.
func fromPodIface(p Pod, negate bool) []string {
	not := []string{}
	if negate {
		not = []string{"!"}
	}
	if p.Layout == LayoutBridge {
		return slices.Concat([]string{"-m", "physdev"}, not, []string{"--physdev-in", p.HostIface})
	}
	return slices.Concat(not, []string{"-i", p.HostIface})
}

// toPodIface matches what leaves through the pod's host interface. On a
// bridge physdev names the output port of bridged frames only, so the
// negated form is limited to them: traffic routed into the bridge (other
// nodes, the outside, hostPort DNAT) reaches the pod by its address.
func toPodIface(p Pod, negate bool) []string {
	if p.Layout == LayoutBridge {
		if negate {
			return []string{"-m", "physdev", "--physdev-is-bridged", "!", "--physdev-out", p.HostIface}
		}
		return []string{"-m", "physdev", "--physdev-out", p.HostIface, "--physdev-is-bridged"}
	}
	if negate {
		return []string{"!", "-o", p.HostIface}
	}
	return []string{"-o", p.HostIface}
}

// dispatchRules are the pod's rules in the shared chains for one family,
// by chain, in order. Dispatch is by address, which the kernel compares
// natively, so a new connection costs little however many pods the node
// has; the interface is checked only in the pod's own chains, and on
// traffic no address claimed. A bridged pod whose bridge is known needs no
// drop of its own there: the bridge's coverage drops every port's
// unclaimed traffic. All rules carry the same comment, which names
// everything they are built from.
func dispatchRules(p Pod, f ruleset.Family) map[string][]ruleset.Rule {
	c := []string{"-m", "comment", "--comment", podComment(p)}
	out := map[string][]ruleset.Rule{}
	for _, a := range familyIPs(p, f) {
		out[chainEgress] = append(out[chainEgress], slices.Concat([]string{"-s", hostPrefix(a)}, c, []string{"-j", fromPodChain(p.Key)}))
		out[chainIngress] = append(out[chainIngress], slices.Concat([]string{"-d", hostPrefix(a)}, c, []string{"-j", toPodChain(p.Key)}))
	}
	if !coveredByBridge(p) {
		out[chainAntispoof] = []ruleset.Rule{slices.Concat(fromPodIface(p, false), c, []string{"-j", "DROP"})}
		out[chainMisaddressed] = []ruleset.Rule{slices.Concat(toPodIface(p, false), c, []string{"-j", "DROP"})}
	}
	return out
}

func coveredByBridge(p Pod) bool { return p.Layout == LayoutBridge && p.Bridge != "" }

// bridgeCoverage drops what arrives from, or leaves through, a pod bridge
// without a local pod's dispatch having claimed it: a port whose pod has
// no rules yet, or a pod that spoofs its source. In FORWARD and INPUT a
// bridge's frames, bridged or routed, carry the bridge as in- or
// out-interface. These rules follow the neighbour-discovery exceptions.
func bridgeCoverage(bridge string) (antispoof, misaddressed ruleset.Rule) {
	return ruleset.Rule{"-i", bridge, "-m", "comment", "--comment", bridgeComment(bridge), "-j", "DROP"},
		ruleset.Rule{"-o", bridge, "-m", "comment", "--comment", bridgeComment(bridge), "-j", "DROP"}
}

const bridgeCommentPrefix = "podwall bridge="

func bridgeComment(bridge string) string {
	return bridgeCommentPrefix + bridge + " unclaimed traffic of its ports"
}

// parseBridgeComment reads the bridge of a coverage rule as saved.
func parseBridgeComment(rule string) (string, bool) {
	_, after, ok := strings.Cut(rule, `--comment "`+bridgeCommentPrefix)
	if !ok {
		return "", false
	}
	bridge, _, ok := strings.Cut(after, " ")
	return bridge, ok && bridge != ""
}

// sharedChains are the chains that hold dispatch rules. Those that match
// interfaces (physdev is costly) are separate from those that match
// addresses, so that dispatch never scans them.
var sharedChains = []string{chainEgress, chainAntispoof, chainIngress, chainMisaddressed}

// neighbourDiscovery lets IPv6 router and neighbour discovery through,
// ahead of policy and of the drops of undispatched pod traffic: without it
// IPv6 does not work at all. src may be empty.
func neighbourDiscovery(src, target string) []ruleset.Rule {
	var out []ruleset.Rule
	for _, t := range []string{"router-solicitation", "neighbour-solicitation", "neighbour-advertisement"} {
		var r []string
		if src != "" {
			r = append(r, "-s", src)
		}
		r = append(r, "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", t,
			"-m", "comment", "--comment", "podwall: neighbour discovery", "-j", target)
		out = append(out, r)
	}
	return out
}

// podLayout is everything of one pod in one family's filter table that
// does not depend on policy: its "from pod" and "to pod" chains and its
// rules in the shared chains. It is the one definition that the agent's
// writes, the plugin's fallback, CHECK, the state read back and removal
// all use.
type podLayout struct {
	from, to ruleset.Chain
	dispatch map[string][]ruleset.Rule
}

func layoutOf(p Pod, f ruleset.Family) (podLayout, error) {
	from, err := fromPodRules(p, f)
	if err != nil {
		return podLayout{}, err
	}
	return podLayout{
		from:     ruleset.Chain{Family: f, Name: fromPodChain(p.Key), Pod: ruleset.Ref{Namespace: p.Namespace, Name: p.Name}, Direction: ruleset.Egress, Rules: from},
		to:       ruleset.Chain{Family: f, Name: toPodChain(p.Key), Pod: ruleset.Ref{Namespace: p.Namespace, Name: p.Name}, Direction: ruleset.Ingress, Rules: toPodRules(p, f)},
		dispatch: dispatchRules(p, f),
	}, nil
}

// podChainNames are the four chains of a key.
func podChainNames(key string) []string {
	in, out := policyChains(key)
	return []string{fromPodChain(key), toPodChain(key), in, out}
}

// fromPodRules is the static "from pod" chain of one family. Traffic
// reaches it by its source address; it must also come from the pod's
// interface (anti-spoofing).
func fromPodRules(p Pod, f ruleset.Family) ([]ruleset.Rule, error) {
	ips := familyIPs(p, f)
	rules := []ruleset.Rule{{"-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}}
	switch len(ips) {
	case 0:
		return append(rules, ruleset.Rule{"-m", "comment", "--comment",
			fmt.Sprintf("podwall: %s has no %s address, drop all", podRef(p), f), "-j", "DROP"}), nil
	case 1:
	default:
		return nil, fmt.Errorf("pod %s has %d %s addresses; one per family is supported", podRef(p), len(ips), f)
	}
	rules = append(rules, slices.Concat(fromPodIface(p, true), []string{"-m", "comment", "--comment",
		fmt.Sprintf("podwall: anti-spoofing %s: %s only from %s", podRef(p), ips[0], p.HostIface), "-j", "DROP"}))
	if f == ruleset.IPv6 {
		rules = append(rules, neighbourDiscovery("", "RETURN")...)
	}
	_, out := policyChains(p.Key)
	return append(rules,
		ruleset.Rule{"-j", out},
		ruleset.Rule{"-j", "MARK", "--set-xmark", markEgressPassed},
	), nil
}

// toPodRules is the static "to pod" chain of one family. Traffic reaches
// it by its destination address; bridged, it must also leave through the
// pod's port.
func toPodRules(p Pod, f ruleset.Family) []ruleset.Rule {
	ips := familyIPs(p, f)
	if len(ips) == 0 {
		return []ruleset.Rule{{"-m", "comment", "--comment",
			fmt.Sprintf("podwall: %s has no %s address, drop all", podRef(p), f), "-j", "DROP"}}
	}
	rules := []ruleset.Rule{slices.Concat(toPodIface(p, true), []string{"-m", "comment", "--comment",
		fmt.Sprintf("podwall: %s reaches %s only through %s", ips[0], podRef(p), p.HostIface), "-j", "DROP"})}
	if f == ruleset.IPv6 {
		rules = append(rules, neighbourDiscovery("", "ACCEPT")...)
	}
	in, _ := policyChains(p.Key)
	return append(rules, ruleset.Rule{"-j", in}, ruleset.Rule{"-j", chainAdmit})
}

func defaultDenyRule(p Pod) []string {
	return []string{"-m", "comment", "--comment", "podwall: default deny " + podRef(p), "-j", "DROP"}
}

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// maxComment is what the iptables comment match holds (256 with the NUL).
const maxComment = 255

// podComment is the identity on each dispatch rule, parsed back by Pods.
// When it would not fit, the container ID is shortened to 12 characters
// (GC compares chain keys, not IDs), then the pod name is cut: the agent
// learns full identities from attach requests, the comment is for
// adoption and for people.
func podComment(p Pod) string {
	ips := make([]string, len(p.IPs))
	for i, a := range p.IPs {
		ips[i] = a.String()
	}
	format := func(cid, name string) string {
		c := fmt.Sprintf("podwall pod=%s/%s key=%s net=%s cid=%s if=%s ips=%s dev=%s layout=%s",
			p.Namespace, name, p.Key, p.Network, cid, p.IfName, strings.Join(ips, ","), p.HostIface, p.Layout)
		if p.Bridge != "" {
			c += " br=" + p.Bridge
		}
		return c
	}
	c := format(p.ContainerID, p.Name)
	if len(c) <= maxComment {
		return c
	}
	cid := p.ContainerID
	if len(cid) > 12 {
		cid = cid[:12]
	}
	if c = format(cid, p.Name); len(c) <= maxComment {
		return c
	}
	name := p.Name
	if over := len(c) - maxComment; over < len(name) {
		name = name[:len(name)-over]
	} else {
		name = ""
	}
	return format(cid, name)
}

// parsePodComment reads a dispatch rule as iptables-save prints it.
func parsePodComment(rule string) (Pod, bool) {
	_, after, ok := strings.Cut(rule, `--comment "podwall pod=`)
	if !ok {
		return Pod{}, false
	}
	text, _, ok := strings.Cut(after, `"`)
	if !ok {
		return Pod{}, false
	}
	var p Pod
	for _, field := range strings.Fields("pod=" + text) {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "pod":
			p.Namespace, p.Name, _ = strings.Cut(v, "/")
		case "key":
			p.Key = v
		case "net":
			p.Network = v
		case "cid":
			p.ContainerID = v
		case "if":
			p.IfName = v
		case "ips":
			for _, s := range strings.Split(v, ",") {
				if a, err := netip.ParseAddr(s); err == nil {
					p.IPs = append(p.IPs, a)
				}
			}
		case "dev":
			p.HostIface = v
		case "layout":
			p.Layout = Layout(v)
		case "br":
			p.Bridge = v
		}
	}
	return p, ruleset.ValidateChainKey(p.Key) == nil
}

// ValidatePod says whether the dataplane can write the pod's rules.
func ValidatePod(p Pod) error { return validatePod(p) }

func validatePod(p Pod) error {
	if err := ruleset.ValidateChainKey(p.Key); err != nil {
		return err
	}
	if p.HostIface == "" || strings.ContainsAny(p.HostIface, " \t\"") {
		return fmt.Errorf("pod %s: invalid host interface %q", podRef(p), p.HostIface)
	}
	if p.Layout != LayoutBridge && p.Layout != LayoutRouted {
		return fmt.Errorf("pod %s: unknown layout %q", podRef(p), p.Layout)
	}
	if p.Bridge != "" && (p.Layout != LayoutBridge || strings.ContainsAny(p.Bridge, " \t\"\\")) {
		return fmt.Errorf("pod %s: invalid bridge %q", podRef(p), p.Bridge)
	}
	if len(p.IPs) == 0 {
		return fmt.Errorf("pod %s: no address", podRef(p))
	}
	for _, s := range []string{p.Namespace, p.Name, p.Network, p.ContainerID, p.IfName} {
		if strings.ContainsAny(s, " \t\"\\") {
			return fmt.Errorf("pod %s: %q cannot be part of a rule comment", podRef(p), s)
		}
	}
	if len(podComment(p)) > maxComment {
		return fmt.Errorf("pod %s: identity too long for a rule comment", podRef(p))
	}
	return nil
}
