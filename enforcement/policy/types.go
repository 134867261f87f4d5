package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Mode decides what a pod that no policy selects gets in that direction.
type Mode string

const (
	// ModeDeny isolates every pod in both directions; only policies open it.
	ModeDeny Mode = "deny"
	// ModeKubernetes follows the NetworkPolicy API: unselected means open.
	ModeKubernetes Mode = "kubernetes"
)

// ParseMode accepts "deny", "kubernetes", or "" (which means deny).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeDeny:
		return ModeDeny, nil
	case ModeKubernetes:
		return ModeKubernetes, nil
	}
	return "", fmt.Errorf("unknown policy mode %q (want %q or %q)", s, ModeDeny, ModeKubernetes)
}

// Family is an IP family, spelled the way ipset spells it.
type Family string

const (
	IPv4 Family = "inet"
	IPv6 Family = "inet6"
)

// Families lists both families in output order.
func Families() []Family { return []Family{IPv4, IPv6} }

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Direction is the direction of traffic relative to a pod.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Ref names a namespaced object.
type Ref struct {
	Namespace string
	Name      string
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// Input is everything the compiler knows about the cluster.
type Input struct {
	// Namespaces give the labels namespaceSelectors match. The compiler adds
	// kubernetes.io/metadata.name itself, as the API server does.
	Namespaces []corev1.Namespace
	// Pods give labels, status.podIPs (status.podIP as a fallback),
	// spec.nodeName, and named container ports. Every pod is a potential
	// peer; host-network and finished pods never are.
	Pods     []corev1.Pod
	Policies []networkingv1.NetworkPolicy
	// Node is this node's name. A pod scheduled here (spec.nodeName) that
	// has no chain key yet is listed in Desired.Pending.
	Node string
	Mode Mode
	// ChainKeys maps each pod attached on this node (namespace/name; an
	// empty namespace means "default") to the key its chains are named
	// from: see ChainKey and ChainNames. The CNI plugin computes the key at
	// ADD and reports it with the pod's identity. Exactly the keyed pods get
	// chains; pods on other nodes are only peers. A keyed pod is enforced
	// here even if its spec.nodeName names another node (that is reported),
	// and a key whose pod is missing from Pods still gets chains, which
	// drop everything, so that an attached pod never loses its chains.
	ChainKeys map[Ref]string
	// Cache, when set, keeps what is derived from single objects between
	// compilations (see Cache); the output is the same with or without.
	Cache *Cache
}

// Desired is the complete enforcement state for the node: what the
// dataplane should converge to. Every slice is sorted, so two compilations
// of the same input are identical and can be diffed.
type Desired struct {
	// Sets are sorted by name. Only sets that some rule uses are present.
	Sets []IPSet
	// Chains are sorted by family, then name.
	Chains []Chain
	// Pods are the keyed local pods, sorted by namespace/name.
	Pods []LocalPod
	// Pending are local pods that have no chain key yet (not attached, or
	// the plugin has not reported them), sorted.
	Pending []Ref
	// Problems are per-object errors; the objects were skipped or, for
	// policies, reduced to isolation without allows.
	Problems []Problem
}

// LocalPod ties a pod on this node to its chains.
type LocalPod struct {
	Pod Ref
	Key string
	// IPs are the pod's addresses, sorted. Empty when unknown.
	IPs          []netip.Addr
	IngressChain string
	EgressChain  string
}

// Chain is one pod's chain in one family.
type Chain struct {
	Family    Family
	Name      string
	Pod       Ref
	Direction Direction
	// Rules in order. Each one is the argument list that follows
	// "-A <chain>" in iptables-restore input.
	Rules []Rule
}

// Rule is an iptables rule specification without the chain, for example
// ["-p","tcp","-m","set","--match-set","PODWALL-PODS4-…","src","-m","tcp",
// "--dport","80","-m","comment","--comment","x/a ingress: …","-j","RETURN"].
type Rule []string

// String renders the rule the way iptables -S shows it, quoting where needed.
func (r Rule) String() string {
	var b strings.Builder
	for i, a := range r {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a == "" || strings.ContainsAny(a, " \t\"'\\") {
			b.WriteString(strconv.Quote(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// SetType is an ipset type.
type SetType string

const (
	SetHashIP     SetType = "hash:ip"
	SetHashNet    SetType = "hash:net"
	SetHashIPPort SetType = "hash:ip,port"
)

// IPSet is one set. Members are in ipset restore syntax and sorted:
// "10.0.0.7" (hash:ip), "10.0.0.0/8" and "10.1.0.0/16 nomatch" (hash:net;
// host prefixes are written without /32 or /128, as ipset lists them),
// "10.0.0.7,tcp:8080" (hash:ip,port).
type IPSet struct {
	Name    string
	Family  Family
	Type    SetType
	Comment string
	Members []string
}

// Problem reports one object that could not be compiled as written.
type Problem struct {
	Kind      string // "NetworkPolicy", "Pod", "Namespace" or "ChainKey"
	Namespace string
	Name      string
	Err       error
}

func (p Problem) Error() string {
	obj := p.Name
	if p.Namespace != "" {
		obj = p.Namespace + "/" + p.Name
	}
	return fmt.Sprintf("%s %s: %v", p.Kind, obj, p.Err)
}

func (p Problem) Unwrap() error { return p.Err }

// Stats counts what a Desired would put in the kernel.
type Stats struct {
	Chains     int
	Rules      int
	Sets       int
	SetEntries int
}

// Stats counts chains, rules, sets and set entries.
func (d *Desired) Stats() Stats {
	s := Stats{Chains: len(d.Chains), Sets: len(d.Sets)}
	for _, c := range d.Chains {
		s.Rules += len(c.Rules)
	}
	for _, set := range d.Sets {
		s.SetEntries += len(set.Members)
	}
	return s
}

// Chain returns the chain with that family and name, or nil.
func (d *Desired) Chain(f Family, name string) *Chain {
	for i := range d.Chains {
		if d.Chains[i].Family == f && d.Chains[i].Name == name {
			return &d.Chains[i]
		}
	}
	return nil
}

// Set returns the set with that name, or nil.
func (d *Desired) Set(name string) *IPSet {
	for i := range d.Sets {
		if d.Sets[i].Name == name {
			return &d.Sets[i]
		}
	}
	return nil
}
