package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// setRegistry hands out set names by content and fills the sets in at the
// end, so a set is computed once however many rules use it.
type setRegistry struct {
	sets map[string]*pendingSet
	// used lists the sets registered since it was last reset, so that an
	// attachment that is not compiled again can register them again.
	used []*pendingSet
	// members keeps the members of sets filled by earlier compilations
	// (see compiler.members).
	members map[string]setMembers
}

type pendingSet struct {
	set ruleset.IPSet
	key string
	// selection is the key of the peer whose selected pods the members
	// come from; "" when they come from the set's content alone.
	selection string
	// members computes the set's members from the compiler's cluster; it
	// captures nothing else that depends on the cluster, so that a set
	// registered by an earlier compilation is filled from the current one.
	members func(*compiler) []string
}

// setMembers are a set's members and the selection they were made from.
type setMembers struct {
	selection string
	members   []string
}

func newSetRegistry(members map[string]setMembers) *setRegistry {
	return &setRegistry{sets: map[string]*pendingSet{}, members: members}
}

func (r *setRegistry) use(kind setKind, f ruleset.Family, typ ruleset.SetType, key, comment, selection string, members func(*compiler) []string) (string, error) {
	name := setName(kind, f, key)
	if s, ok := r.sets[name]; ok {
		if s.key != key {
			return "", fmt.Errorf("set name collision: %s stands for both %q and %q", name, s.key, key)
		}
		r.used = append(r.used, s)
		return name, nil
	}
	s := &pendingSet{
		set:       ruleset.IPSet{Name: name, Family: f, Type: typ, Comment: sanitizeComment(comment)},
		key:       key,
		selection: selection,
		members:   members,
	}
	r.sets[name] = s
	r.used = append(r.used, s)
	return name, nil
}

// adopt registers again a set that use made in an earlier compilation.
func (r *setRegistry) adopt(s *pendingSet) error {
	if cur, ok := r.sets[s.set.Name]; ok && cur.key != s.key {
		return fmt.Errorf("set name collision: %s stands for both %q and %q", s.set.Name, cur.key, s.key)
	}
	r.sets[s.set.Name] = s
	r.used = append(r.used, s)
	return nil
}

// finish fills the sets, from the members kept when they are there, and
// forgets the members and selections no set uses any more.
func (r *setRegistry) finish(c *compiler) []ruleset.IPSet {
	out := make([]ruleset.IPSet, 0, len(r.sets))
	selections := map[string]bool{}
	for _, s := range r.sets {
		set := s.set
		if m, ok := r.members[set.Name]; ok {
			set.Members = m.members
		} else {
			set.Members = s.members(c)
			r.members[set.Name] = setMembers{selection: s.selection, members: set.Members}
		}
		selections[s.selection] = true
		out = append(out, set)
	}
	for name := range r.members {
		if _, ok := r.sets[name]; !ok {
			delete(r.members, name)
		}
	}
	for key := range c.selections {
		if !selections[key] {
			delete(c.selections, key)
		}
	}
	slices.SortFunc(out, func(a, b ruleset.IPSet) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// podSet names the hash:ip set of the pods a peer selects.
func (c *compiler) podSet(pp *podPeer, f ruleset.Family) (string, error) {
	return c.sets.use(kindPods, f, ruleset.SetHashIP, pp.key, pp.desc+" ("+f.String()+")", pp.key, func(c *compiler) []string {
		var addrs []netip.Addr
		for _, p := range c.selected(pp) {
			addrs = append(addrs, p.addrs(f)...)
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		addrs = slices.Compact(addrs)
		out := make([]string, len(addrs))
		for i, a := range addrs {
			out[i] = a.String()
		}
		return out
	})
}

// cidrSet names the hash:net set of an ipBlock. The block is the positive
// entry and each except a nomatch entry: hash:net answers with the longest
// matching prefix, so an address inside an except does not match.
func (c *compiler) cidrSet(b *ipBlock) (string, error) {
	f := b.family()
	return c.sets.use(kindCIDR, f, ruleset.SetHashNet, b.key, b.desc, "", func(*compiler) []string { return cidrMembers(b) })
}

func cidrMembers(b *ipBlock) []string {
	nomatch := map[netip.Prefix]bool{}
	// hash:net cannot hold a /0, but its two halves mean the same.
	if b.cidr.Bits() == 0 {
		for _, half := range halves(b.cidr) {
			nomatch[half] = false
		}
	} else {
		nomatch[b.cidr] = false
	}
	// An except equal to a half of a /0 replaces that half: the same
	// element cannot be in a set both with and without nomatch.
	for _, e := range b.except {
		nomatch[e] = true
	}
	prefixes := make([]netip.Prefix, 0, len(nomatch))
	for p := range nomatch {
		prefixes = append(prefixes, p)
	}
	slices.SortFunc(prefixes, comparePrefix)
	out := make([]string, len(prefixes))
	for i, p := range prefixes {
		out[i] = formatNet(p)
		if nomatch[p] {
			out[i] += " nomatch"
		}
	}
	return out
}

func halves(zero netip.Prefix) []netip.Prefix {
	lo := netip.PrefixFrom(zero.Addr(), 1)
	hiBytes := zero.Addr().AsSlice()
	hiBytes[0] = 0x80
	hi, _ := netip.AddrFromSlice(hiBytes)
	return []netip.Prefix{lo, netip.PrefixFrom(hi, 1)}
}

// formatNet writes a prefix the way `ipset list` shows hash:net members:
// host prefixes without their length.
func formatNet(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}

// namedPortSet names the hash:ip,port set of (address, protocol, port) for
// every pod the peer covers that serves the named port: the egress side of a
// named port, which resolves on each destination pod separately. A nil
// peer means every pod; an ipBlock peer means every pod whose address is in
// the block.
func (c *compiler) namedPortSet(pp *podPeer, b *ipBlock, port portSpec, f ruleset.Family) (string, error) {
	proto := ipsetProto(port.proto)
	var key, desc, selection string
	switch {
	case b != nil:
		key, desc, selection = "block:"+b.key, "pods in "+b.desc, allPodsPeer().key
	default:
		key, desc, selection = "pods:"+pp.key, pp.desc, pp.key
	}
	key += "|port:" + proto + "/" + port.name
	desc += " serving " + port.name + " (" + proto + ", " + f.String() + ")"
	return c.sets.use(kindPodPort, f, ruleset.SetHashIPPort, key, desc, selection, func(c *compiler) []string {
		var pods []*podInfo
		if b != nil {
			pods = c.allPeerPods()
		} else {
			pods = c.selected(pp)
		}
		type entry struct {
			addr netip.Addr
			port uint16
		}
		var entries []entry
		for _, p := range pods {
			ports := p.namedPort(port.name, port.proto)
			if len(ports) == 0 {
				continue
			}
			for _, a := range p.addrs(f) {
				if b != nil && !b.contains(a) {
					continue
				}
				for _, n := range ports {
					entries = append(entries, entry{a, n})
				}
			}
		}
		slices.SortFunc(entries, func(x, y entry) int {
			if c := x.addr.Compare(y.addr); c != 0 {
				return c
			}
			return int(x.port) - int(y.port)
		})
		entries = slices.Compact(entries)
		out := make([]string, len(entries))
		for i, e := range entries {
			out[i] = fmt.Sprintf("%s,%s:%d", e.addr, proto, e.port)
		}
		return out
	})
}

// ipsetProto is the protocol as ipset and iptables spell it.
func ipsetProto(p corev1.Protocol) string { return strings.ToLower(string(p)) }
