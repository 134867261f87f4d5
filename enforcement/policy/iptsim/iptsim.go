// Package iptsim interprets a ruleset.Desired the way iptables and ipset
// would judge a packet, without a kernel. It is deliberately written apart
// from the compiler: it reads only the rule argument lists and the set
// members, exactly as iptables-restore and ipset restore would receive
// them, and refuses anything it does not understand, so that compiler
// tests check the text that reaches the kernel rather than the compiler's
// intentions.
//
// A packet from a local pod traverses that pod's egress (OUT) chain; a
// packet to a local pod traverses its ingress (IN) chain; a packet between
// two local pods traverses both, egress first, as the dispatcher sends it.
package iptsim

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
)

// Packet is what the pod chains look at.
type Packet struct {
	Src, Dst netip.Addr
	Protocol corev1.Protocol
	DstPort  uint16
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", p.Src, p.Dst, p.Protocol, p.DstPort)
}

// Hop is what one pod chain did with a packet.
type Hop struct {
	// Evaluated is false when the pod at that end is not local.
	Evaluated bool
	Pod       ruleset.Ref
	Chain     string
	Allowed   bool
	// Rule is the index of the rule that decided, or -1 when the packet
	// fell off the end of the chain (an implicit RETURN).
	Rule    int
	Comment string
}

func (h Hop) String() string {
	if !h.Evaluated {
		return "not local"
	}
	verdict := "DROP"
	if h.Allowed {
		verdict = "allow"
	}
	return fmt.Sprintf("%s by %s rule %d (%s)", verdict, h.Chain, h.Rule, h.Comment)
}

// Verdict is the outcome for a packet.
type Verdict struct {
	Allowed bool
	Egress  Hop // the source pod's chain
	Ingress Hop // the destination pod's chain
}

// Simulator holds a parsed Desired.
type Simulator struct {
	sets   map[string]*set
	chains map[chainID][]rule
	byAddr map[netip.Addr]ruleset.LocalPod
}

type chainID struct {
	family ruleset.Family
	name   string
}

// New parses every set and every rule of d, and fails on anything that
// iptables or ipset would reject or that this simulator cannot interpret.
func New(d *ruleset.Desired) (*Simulator, error) {
	s := &Simulator{
		sets:   map[string]*set{},
		chains: map[chainID][]rule{},
		byAddr: map[netip.Addr]ruleset.LocalPod{},
	}
	for _, is := range d.Sets {
		if _, dup := s.sets[is.Name]; dup {
			return nil, fmt.Errorf("set %s defined twice", is.Name)
		}
		parsed, err := parseSet(is)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", is.Name, err)
		}
		s.sets[is.Name] = parsed
	}
	for _, c := range d.Chains {
		id := chainID{c.Family, c.Name}
		if _, dup := s.chains[id]; dup {
			return nil, fmt.Errorf("chain %s (%s) defined twice", c.Name, c.Family)
		}
		if len(c.Name) > 28 {
			return nil, fmt.Errorf("chain %s: name longer than 28 characters", c.Name)
		}
		rules := make([]rule, 0, len(c.Rules))
		for i, r := range c.Rules {
			pr, err := s.parseRule(c.Family, r)
			if err != nil {
				return nil, fmt.Errorf("chain %s (%s) rule %d %q: %w", c.Name, c.Family, i, r.String(), err)
			}
			rules = append(rules, pr)
		}
		s.chains[id] = rules
	}
	for _, lp := range d.Pods {
		for _, a := range lp.IPs {
			if prev, dup := s.byAddr[a]; dup && prev.IngressChain != lp.IngressChain {
				return nil, fmt.Errorf("address %s belongs to local pods %s and %s", a, prev.Pod, lp.Pod)
			}
			s.byAddr[a] = lp
		}
	}
	return s, nil
}

// Evaluate judges a packet: the source's egress chain, if the source is a
// local pod, then the destination's ingress chain, if it is. Both hops are
// always evaluated, so a verdict shows every reason.
func (s *Simulator) Evaluate(p Packet) (Verdict, error) {
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
		return Verdict{}, fmt.Errorf("packet %s: source and destination must be addresses of one family", p)
	}
	v := Verdict{Allowed: true}
	var err error
	if lp, ok := s.byAddr[p.Src]; ok {
		if v.Egress, err = s.run(lp, lp.EgressChain, p); err != nil {
			return Verdict{}, err
		}
		v.Allowed = v.Allowed && v.Egress.Allowed
	}
	if lp, ok := s.byAddr[p.Dst]; ok {
		if v.Ingress, err = s.run(lp, lp.IngressChain, p); err != nil {
			return Verdict{}, err
		}
		v.Allowed = v.Allowed && v.Ingress.Allowed
	}
	return v, nil
}

func (s *Simulator) run(lp ruleset.LocalPod, chain string, p Packet) (Hop, error) {
	f := ruleset.IPv4
	if p.Src.Is6() {
		f = ruleset.IPv6
	}
	rules, ok := s.chains[chainID{f, chain}]
	if !ok {
		return Hop{}, fmt.Errorf("pod %s: chain %s missing in %s", lp.Pod, chain, f)
	}
	hop := Hop{Evaluated: true, Pod: lp.Pod, Chain: chain}
	for i, r := range rules {
		if !r.matches(p) {
			continue
		}
		if r.target == "" {
			continue // counts, and goes on
		}
		hop.Allowed, hop.Rule, hop.Comment = r.target == policy.TargetAllow, i, r.comment
		return hop, nil
	}
	hop.Allowed, hop.Rule, hop.Comment = true, -1, "fell off the end of the chain: implicit RETURN"
	return hop, nil
}

// rule is a parsed rule.
type rule struct {
	proto   string // "" for any
	sets    []setMatch
	dports  []portRange // nil: no port match
	comment string
	target  string // "" for none
}

type setMatch struct {
	set   *set
	flags []string
}

type portRange struct{ first, last uint16 }

func (r *rule) matches(p Packet) bool {
	if r.proto != "" && r.proto != strings.ToLower(string(p.Protocol)) {
		return false
	}
	if r.dports != nil {
		in := false
		for _, pr := range r.dports {
			if p.DstPort >= pr.first && p.DstPort <= pr.last {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	for _, sm := range r.sets {
		if !sm.set.matches(p, sm.flags) {
			return false
		}
	}
	return true
}

func (s *Simulator) parseRule(f ruleset.Family, args ruleset.Rule) (rule, error) {
	var r rule
	next := func(i *int, what string) (string, error) {
		*i++
		if *i >= len(args) {
			return "", fmt.Errorf("%s: missing value", what)
		}
		return args[*i], nil
	}
	portMatched := false
	targetSeen := false
	for i := 0; i < len(args); i++ {
		if targetSeen {
			return rule{}, fmt.Errorf("%q after the target", args[i])
		}
		switch args[i] {
		case "-p":
			v, err := next(&i, "-p")
			if err != nil {
				return rule{}, err
			}
			if r.proto != "" {
				return rule{}, errors.New("-p given twice")
			}
			switch v {
			case "tcp", "udp", "sctp":
				r.proto = v
			default:
				return rule{}, fmt.Errorf("unsupported protocol %q", v)
			}
		case "-m":
			mod, err := next(&i, "-m")
			if err != nil {
				return rule{}, err
			}
			opt, err := next(&i, "-m "+mod)
			if err != nil {
				return rule{}, err
			}
			switch mod {
			case "set":
				if opt != "--match-set" {
					return rule{}, fmt.Errorf("-m set: unsupported option %q", opt)
				}
				name, err := next(&i, opt)
				if err != nil {
					return rule{}, err
				}
				flags, err := next(&i, opt)
				if err != nil {
					return rule{}, err
				}
				set, ok := s.sets[name]
				if !ok {
					return rule{}, fmt.Errorf("set %s does not exist", name)
				}
				if set.family != f {
					return rule{}, fmt.Errorf("set %s is %s, chain is %s", name, set.family, f)
				}
				fl := strings.Split(flags, ",")
				if len(fl) != set.dimension() {
					return rule{}, fmt.Errorf("set %s of type %s needs %d direction flags, got %q", name, set.typ, set.dimension(), flags)
				}
				for j, x := range fl {
					if x != "src" && x != "dst" {
						return rule{}, fmt.Errorf("bad direction flag %q", x)
					}
					if set.typ == ruleset.SetHashIPPort && j == 1 && x != "dst" {
						return rule{}, errors.New("only destination ports are known to the simulator")
					}
				}
				r.sets = append(r.sets, setMatch{set: set, flags: fl})
			case "tcp", "udp", "sctp":
				if r.proto != mod {
					return rule{}, fmt.Errorf("-m %s needs -p %s before it", mod, mod)
				}
				if opt != "--dport" {
					return rule{}, fmt.Errorf("-m %s: unsupported option %q", mod, opt)
				}
				v, err := next(&i, opt)
				if err != nil {
					return rule{}, err
				}
				pr, err := parsePortRange(v, ":")
				if err != nil {
					return rule{}, err
				}
				if portMatched {
					return rule{}, errors.New("two port matches")
				}
				portMatched = true
				r.dports = []portRange{pr}
			case "multiport":
				if r.proto == "" {
					return rule{}, errors.New("-m multiport needs -p")
				}
				if opt != "--dports" {
					return rule{}, fmt.Errorf("-m multiport: unsupported option %q", opt)
				}
				v, err := next(&i, opt)
				if err != nil {
					return rule{}, err
				}
				slots := 0
				for _, part := range strings.Split(v, ",") {
					pr, err := parsePortRange(part, ":")
					if err != nil {
						return rule{}, err
					}
					slots++
					if pr.first != pr.last {
						slots++
					}
					r.dports = append(r.dports, pr)
				}
				if slots > 15 {
					return rule{}, fmt.Errorf("multiport with %d slots, more than 15", slots)
				}
				if portMatched {
					return rule{}, errors.New("two port matches")
				}
				portMatched = true
			case "comment":
				if opt != "--comment" {
					return rule{}, fmt.Errorf("-m comment: unsupported option %q", opt)
				}
				v, err := next(&i, opt)
				if err != nil {
					return rule{}, err
				}
				if len(v) > 255 || strings.ContainsAny(v, "\"\n") {
					return rule{}, fmt.Errorf("comment %q too long or unquotable", v)
				}
				r.comment = v
			default:
				return rule{}, fmt.Errorf("unsupported match module %q", mod)
			}
		case "-j":
			v, err := next(&i, "-j")
			if err != nil {
				return rule{}, err
			}
			if v != policy.TargetAllow && v != policy.TargetDeny {
				return rule{}, fmt.Errorf("target %q: pod chains may only %s or %s", v, policy.TargetAllow, policy.TargetDeny)
			}
			r.target = v
			targetSeen = true
		default:
			return rule{}, fmt.Errorf("unsupported argument %q", args[i])
		}
	}
	return r, nil
}

func parsePortRange(s, sep string) (portRange, error) {
	lo, hi, isRange := strings.Cut(s, sep)
	a, err := parsePort(lo)
	if err != nil {
		return portRange{}, err
	}
	if !isRange {
		return portRange{a, a}, nil
	}
	b, err := parsePort(hi)
	if err != nil {
		return portRange{}, err
	}
	if b < a {
		return portRange{}, fmt.Errorf("port range %q is backwards", s)
	}
	return portRange{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(n), nil
}
