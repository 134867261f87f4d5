package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// parsedPolicy is a NetworkPolicy reduced to what enforcement needs.
type parsedPolicy struct {
	ref ruleset.Ref
	// podSel is what the policy selects in its namespace. When the
	// policy's own podSelector is unparseable it is everything: fail closed.
	podSel  selector
	ingress bool // isolates selected pods for ingress
	egress  bool
	// rules are nil when err is set: an invalid policy allows nothing.
	ingressRules []parsedRule
	egressRules  []parsedRule
	err          error
}

func (p *parsedPolicy) affects(d ruleset.Direction) bool {
	if d == ruleset.Ingress {
		return p.ingress
	}
	return p.egress
}

func (p *parsedPolicy) rules(d ruleset.Direction) []parsedRule {
	if d == ruleset.Ingress {
		return p.ingressRules
	}
	return p.egressRules
}

// parsedRule is one ingress or egress rule.
type parsedRule struct {
	number  int  // 1-based, as people count
	anyPeer bool // from/to missing or empty
	peers   []peer
	anyPort bool // ports missing or empty
	ports   []portSpec
}

// peer is either a pod selection or an ipBlock.
type peer struct {
	pods  *podPeer
	block *ipBlock
}

// podPeer selects pods by namespace and labels.
type podPeer struct {
	namespace     string // exact namespace when the peer has no namespaceSelector
	allNamespaces bool
	nsSel         selector // when neither of the above
	podSel        selector
	key           string // content key: equal keys select equal pods
	desc          string
}

func newPodPeer(namespace string, allNamespaces bool, nsSel, podSel selector) *podPeer {
	p := &podPeer{namespace: namespace, allNamespaces: allNamespaces, nsSel: nsSel, podSel: podSel}
	var ns string
	switch {
	case allNamespaces:
		p.key, ns = "ns:*", "all namespaces"
	case namespace != "":
		p.key, ns = "ns="+namespace, "namespace "+namespace
	default:
		p.key, ns = "nssel:"+nsSel.canon, "namespaces ["+nsSel.canon+"]"
	}
	p.key += "|podsel:" + podSel.canon
	if podSel.all() {
		p.desc = "all pods in " + ns
	} else {
		p.desc = "pods [" + podSel.canon + "] in " + ns
	}
	return p
}

// allPodsPeer is every pod of the cluster; it is the implicit peer of an
// egress rule with no "to" and a named port, which only pods can resolve.
func allPodsPeer() *podPeer { return newPodPeer("", true, everything(), everything()) }

// ipBlock is a validated CIDR with its exceptions.
type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix // sorted, deduplicated
	key    string
	desc   string
}

func (b *ipBlock) family() ruleset.Family { return ruleset.FamilyOf(b.cidr.Addr()) }

func (b *ipBlock) contains(a netip.Addr) bool {
	if !b.cidr.Contains(a) {
		return false
	}
	for _, e := range b.except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// portSpec is one entry of a rule's ports.
type portSpec struct {
	proto       corev1.Protocol
	anyPort     bool   // protocol given, no port: every port of it
	first, last uint16 // numeric port or range
	name        string // named port, resolved per pod
}

func (p portSpec) String() string {
	proto := strings.ToLower(string(p.proto))
	switch {
	case p.anyPort:
		return proto
	case p.name != "":
		return proto + "/" + p.name
	case p.first == p.last:
		return fmt.Sprintf("%s/%d", proto, p.first)
	}
	return fmt.Sprintf("%s/%d-%d", proto, p.first, p.last)
}

// parsePolicy validates a policy as the API server would and reduces it.
// It never returns nil: an invalid policy comes back with err set and no
// rules, still isolating what it can be said to select.
func parsePolicy(np *networkingv1.NetworkPolicy) *parsedPolicy {
	p := &parsedPolicy{ref: policyRef(np)}
	ns := p.ref.Namespace
	var errs []error
	fail := func(path string, err error) { errs = append(errs, fmt.Errorf("%s: %w", path, err)) }

	sel, err := parseSelector(&np.Spec.PodSelector)
	if err != nil {
		fail("spec.podSelector", err)
		sel = everything()
	}
	p.podSel = sel

	ingress, egress, err := policyTypes(&np.Spec)
	if err != nil {
		fail("spec.policyTypes", err)
		ingress, egress = true, true
	}
	p.ingress, p.egress = ingress, egress

	// Every rule is validated, as the API server does, even the rules of a
	// direction the policyTypes leave out; only those of affected
	// directions are kept.
	for i, r := range np.Spec.Ingress {
		pr, err := parseRule(ns, i+1, r.From, r.Ports, fmt.Sprintf("spec.ingress[%d]", i), "from")
		if err != nil {
			errs = append(errs, err)
		} else if ingress {
			p.ingressRules = append(p.ingressRules, pr)
		}
	}
	for i, r := range np.Spec.Egress {
		pr, err := parseRule(ns, i+1, r.To, r.Ports, fmt.Sprintf("spec.egress[%d]", i), "to")
		if err != nil {
			errs = append(errs, err)
		} else if egress {
			p.egressRules = append(p.egressRules, pr)
		}
	}
	if len(errs) > 0 {
		p.err = errors.Join(errs...)
		p.ingressRules, p.egressRules = nil, nil
	}
	return p
}

// policyTypes applies the API server's defaulting: Ingress always, Egress
// when there are egress rules.
func policyTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool, err error) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0, nil
	}
	if len(spec.PolicyTypes) > 2 {
		return false, false, errors.New("may not specify more than two policyTypes")
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			return false, false, fmt.Errorf("unsupported policyType %q", t)
		}
	}
	return ingress, egress, nil
}

func parseRule(policyNS string, number int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, path, peerField string) (parsedRule, error) {
	r := parsedRule{number: number, anyPeer: len(peers) == 0, anyPort: len(ports) == 0}
	var errs []error
	for i := range peers {
		p, err := parsePeer(policyNS, &peers[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%s[%d]: %w", path, peerField, i, err))
			continue
		}
		r.peers = append(r.peers, p)
	}
	for i := range ports {
		p, err := parsePort(&ports[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.ports[%d]: %w", path, i, err))
			continue
		}
		r.ports = append(r.ports, p)
	}
	return r, errors.Join(errs...)
}

func parsePeer(policyNS string, np *networkingv1.NetworkPolicyPeer) (peer, error) {
	if np.IPBlock != nil {
		if np.PodSelector != nil || np.NamespaceSelector != nil {
			return peer{}, errors.New("may not specify both ipBlock and another peer")
		}
		b, err := parseIPBlock(np.IPBlock)
		if err != nil {
			return peer{}, fmt.Errorf("ipBlock: %w", err)
		}
		return peer{block: b}, nil
	}
	if np.PodSelector == nil && np.NamespaceSelector == nil {
		return peer{}, errors.New("must specify a peer")
	}
	podSel, err := parseSelector(np.PodSelector)
	if err != nil {
		return peer{}, fmt.Errorf("podSelector: %w", err)
	}
	if np.NamespaceSelector == nil {
		return peer{pods: newPodPeer(policyNS, false, selector{}, podSel)}, nil
	}
	nsSel, err := parseSelector(np.NamespaceSelector)
	if err != nil {
		return peer{}, fmt.Errorf("namespaceSelector: %w", err)
	}
	return peer{pods: newPodPeer("", nsSel.all(), nsSel, podSel)}, nil
}

func parseIPBlock(b *networkingv1.IPBlock) (*ipBlock, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil, fmt.Errorf("cidr: invalid CIDR %q", b.CIDR)
	}
	cidr = cidr.Masked()
	out := &ipBlock{cidr: cidr}
	for i, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("except[%d]: invalid CIDR %q", i, e)
		}
		ex = ex.Masked()
		if ex.Addr().BitLen() != cidr.Addr().BitLen() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			return nil, fmt.Errorf("except[%d]: %s must be a strict subset of cidr %s", i, e, b.CIDR)
		}
		out.except = append(out.except, ex)
	}
	slices.SortFunc(out.except, comparePrefix)
	out.except = slices.Compact(out.except)
	excepts := make([]string, len(out.except))
	for i, e := range out.except {
		excepts[i] = e.String()
	}
	out.key = cidr.String() + "|except:" + strings.Join(excepts, ",")
	out.desc = "ipBlock " + cidr.String()
	if len(excepts) > 0 {
		out.desc += " except " + strings.Join(excepts, ",")
	}
	return out, nil
}

func parsePort(p *networkingv1.NetworkPolicyPort) (portSpec, error) {
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	switch proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return portSpec{}, fmt.Errorf("protocol: unsupported protocol %q", proto)
	}
	out := portSpec{proto: proto}
	if p.Port == nil {
		if p.EndPort != nil {
			return portSpec{}, errors.New("endPort: may not be specified when port is not specified")
		}
		out.anyPort = true
		return out, nil
	}
	switch p.Port.Type {
	case intstr.String:
		if p.EndPort != nil {
			return portSpec{}, errors.New("endPort: may not be specified when port is a named port")
		}
		if msgs := validation.IsValidPortName(p.Port.StrVal); len(msgs) > 0 {
			return portSpec{}, fmt.Errorf("port: invalid port name %q: %s", p.Port.StrVal, strings.Join(msgs, "; "))
		}
		out.name = p.Port.StrVal
		return out, nil
	case intstr.Int:
		if msgs := validation.IsValidPortNum(int(p.Port.IntVal)); len(msgs) > 0 {
			return portSpec{}, fmt.Errorf("port: %d: %s", p.Port.IntVal, strings.Join(msgs, "; "))
		}
		out.first, out.last = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
		if p.EndPort != nil {
			end := *p.EndPort
			if end < p.Port.IntVal {
				return portSpec{}, fmt.Errorf("endPort: %d must be greater than or equal to port %d", end, p.Port.IntVal)
			}
			if msgs := validation.IsValidPortNum(int(end)); len(msgs) > 0 {
				return portSpec{}, fmt.Errorf("endPort: %d: %s", end, strings.Join(msgs, "; "))
			}
			out.last = uint16(end)
		}
		return out, nil
	}
	return portSpec{}, fmt.Errorf("port: unknown port type %d", p.Port.Type)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
