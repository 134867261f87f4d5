package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podwall/podwall/enforcement/policy"
)

const (
	chainPrefix = policy.Prefix

	chainForward = chainPrefix + "FORWARD"
	chainInput   = chainPrefix + "INPUT"
	chainEgress  = chainPrefix + "EGRESS"
	chainIngress = chainPrefix + "INGRESS"

	// markEgressPassed is set once a packet passed its source pod's egress
	// policy; PODWALL-FORWARD accepts it when no local pod's ingress claims it.
	markEgressPassed = "0x100000/0x100000"
)

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

// baseChains are created once and never flushed while they exist.
func baseChains() []struct {
	name  string
	rules [][]string
} {
	return []struct {
		name  string
		rules [][]string
	}{
		{chainForward, [][]string{
			{"-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", "podwall: drop invalid", "-j", "DROP"},
			{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-m", "comment", "--comment", "podwall: established", "-j", "ACCEPT"},
			{"-j", chainEgress},
			{"-j", chainIngress},
			{"-m", "mark", "--mark", markEgressPassed, "-m", "comment", "--comment", "podwall: egress allowed, destination not a local pod", "-j", "ACCEPT"},
		}},
		// Node -> pod is OUTPUT and never filtered (kubelet probes); pod ->
		// node passes the pod's egress policy here.
		{chainInput, [][]string{
			{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"},
			{"-j", chainEgress},
		}},
		{chainEgress, nil},
		{chainIngress, nil},
	}
}

// familyIPs returns the pod's addresses of one family.
func familyIPs(p Pod, f policy.Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.IPs {
		if a.Is4() == (f == policy.IPv4) {
			out = append(out, a)
		}
	}
	return out
}

func podRef(p Pod) string { return p.Namespace + "/" + p.Name }

// fromPodMatch selects the pod's outgoing traffic by its host veth;
// physdev-in also works for bridged frames that are then routed.
func fromPodMatch(p Pod) []string {
	if p.Layout == LayoutBridge {
		return []string{"-m", "physdev", "--physdev-in", p.HostIface}
	}
	return []string{"-i", p.HostIface}
}

// toPodMatches select traffic to the pod. On a bridge physdev names the
// output port only for bridged frames; traffic routed into the bridge
// (other nodes, the outside, hostPort DNAT) is matched by the pod's
// address instead, or it would pass without meeting the pod's ingress.
func toPodMatches(p Pod, f policy.Family) [][]string {
	if p.Layout != LayoutBridge {
		return [][]string{{"-o", p.HostIface}}
	}
	out := [][]string{{"-m", "physdev", "--physdev-out", p.HostIface, "--physdev-is-bridged"}}
	for _, a := range familyIPs(p, f) {
		out = append(out, []string{"-d", hostPrefix(a)})
	}
	return out
}

// dispatchRules are the pod's rules in PODWALL-EGRESS and PODWALL-INGRESS
// for one family. All carry the same comment, which names everything they
// are built from.
func dispatchRules(p Pod, f policy.Family) (egress, ingress [][]string) {
	c := []string{"-m", "comment", "--comment", podComment(p)}
	egress = [][]string{slices.Concat(fromPodMatch(p), c, []string{"-j", fromPodChain(p.Key)})}
	for _, m := range toPodMatches(p, f) {
		ingress = append(ingress, slices.Concat(m, c, []string{"-j", toPodChain(p.Key)}))
	}
	return egress, ingress
}

// neighbourDiscovery lets IPv6 router and neighbour discovery through the
// pod's static chains, ahead of policy: without it IPv6 does not work at
// all. In a from-pod chain it is matched twice: from link-local sources
// before anti-spoofing (which would drop them), and from the pod's own
// address after it. src may be empty.
func neighbourDiscovery(src, target string) [][]string {
	var out [][]string
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

// fromPodRules is the static "from pod" chain of one family.
func fromPodRules(p Pod, f policy.Family) ([][]string, error) {
	ips := familyIPs(p, f)
	rules := [][]string{{"-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}}
	switch len(ips) {
	case 0:
		return append(rules, []string{"-m", "comment", "--comment",
			fmt.Sprintf("podwall: %s has no %s address, drop all", podRef(p), f), "-j", "DROP"}), nil
	case 1:
	default:
		return nil, fmt.Errorf("pod %s has %d %s addresses; one per family is supported", podRef(p), len(ips), f)
	}
	if f == policy.IPv6 {
		rules = append(rules, neighbourDiscovery("fe80::/10", "RETURN")...)
	}
	rules = append(rules, []string{"!", "-s", hostPrefix(ips[0]), "-m", "comment", "--comment", "podwall: anti-spoofing " + podRef(p), "-j", "DROP"})
	if f == policy.IPv6 {
		rules = append(rules, neighbourDiscovery("", "RETURN")...)
	}
	_, out := policyChains(p.Key)
	return append(rules,
		[]string{"-j", out},
		[]string{"-j", "MARK", "--set-xmark", markEgressPassed},
	), nil
}

// toPodRules is the static "to pod" chain of one family.
func toPodRules(p Pod, f policy.Family) [][]string {
	if len(familyIPs(p, f)) == 0 {
		return [][]string{{"-m", "comment", "--comment",
			fmt.Sprintf("podwall: %s has no %s address, drop all", podRef(p), f), "-j", "DROP"}}
	}
	var rules [][]string
	if f == policy.IPv6 {
		rules = neighbourDiscovery("", "ACCEPT")
	}
	in, _ := policyChains(p.Key)
	return append(rules, []string{"-j", in}, []string{"-j", "ACCEPT"})
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
		return fmt.Sprintf("podwall pod=%s/%s key=%s net=%s cid=%s if=%s ips=%s dev=%s layout=%s",
			p.Namespace, name, p.Key, p.Network, cid, p.IfName, strings.Join(ips, ","), p.HostIface, p.Layout)
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
		}
	}
	return p, policy.ValidateChainKey(p.Key) == nil
}

func validatePod(p Pod) error {
	if err := policy.ValidateChainKey(p.Key); err != nil {
		return err
	}
	if p.HostIface == "" || strings.ContainsAny(p.HostIface, " \t\"") {
		return fmt.Errorf("pod %s: invalid host interface %q", podRef(p), p.HostIface)
	}
	if p.Layout != LayoutBridge && p.Layout != LayoutRouted {
		return fmt.Errorf("pod %s: unknown layout %q", podRef(p), p.Layout)
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
