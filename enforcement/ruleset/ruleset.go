// Package ruleset is what podwall's policy compiler produces and its
// dataplane converges to: chains of rules, ipsets, and the names they
// share. It knows nothing of Kubernetes, so that the CNI plugin, which
// runs at every pod creation, starts without its libraries.
package ruleset

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Prefix starts every chain and set podwall owns, and nothing else.
const Prefix = "PODWALL-"

const (
	ingressChainPrefix = Prefix + "IN-"
	egressChainPrefix  = Prefix + "OUT-"

	// keyLen characters of base32 carry 80 bits of hash. With the longest
	// chain prefix it makes 28 characters, the iptables maximum.
	keyLen = 16
)

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ChainKey derives a chain key from the parts that identify an attachment.
// The plugin calls it with (network name, container ID, interface name),
// which it has at ADD, DEL, CHECK and GC alike; the same parts always give
// the same key.
func ChainKey(parts ...string) string { return Digest(parts...) }

// ChainNames returns the ingress and egress chain names for a key.
func ChainNames(key string) (ingress, egress string, err error) {
	if err := ValidateChainKey(key); err != nil {
		return "", "", err
	}
	return ingressChainPrefix + key, egressChainPrefix + key, nil
}

// ValidateChainKey checks that a key is 1 to 16 ASCII letters or digits, so
// that both chain names are valid and at most 28 characters long.
func ValidateChainKey(key string) error {
	if len(key) == 0 || len(key) > keyLen {
		return fmt.Errorf("chain key %q: want 1 to %d characters", key, keyLen)
	}
	for _, c := range key {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return fmt.Errorf("chain key %q: only letters and digits are allowed", key)
		}
	}
	return nil
}

// Digest is a stable 16-character base32 digest of the parts, for names.
// Parts are length-prefixed so that ("ab","c") and ("a","bc") differ.
func Digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return keyEncoding.EncodeToString(h.Sum(nil))[:keyLen]
}

// FamilyOf is the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
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
