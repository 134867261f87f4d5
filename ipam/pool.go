package ipam

import (
	"math/big"
	"net/netip"
)

// Pool is the set of addresses of one range that may be handed out: the
// subnet less its network, broadcast and gateway addresses, the exclusions,
// the service CIDRs and the foreign routes of the node.
type Pool struct {
	Range Range
	free  intervalSet
	is4   bool
}

// Pool computes the allocatable addresses of r, given the node's foreign
// route destinations at this instant.
func (c *Config) Pool(r Range, foreign []netip.Prefix) *Pool {
	whole := prefixInterval(r.Subnet)
	free := intervalSet{whole}
	single := func(a netip.Addr) interval { v := addrToU128(a); return interval{v, v} }
	free = free.subtract(interval{whole.first, whole.first})
	if r.Subnet.Addr().Is4() {
		free = free.subtract(interval{whole.last, whole.last})
	}
	if r.Gateway.IsValid() {
		free = free.subtract(single(r.Gateway))
	}
	for _, group := range [][]netip.Prefix{c.Exclude, c.ServiceCIDRs, foreign} {
		for _, p := range group {
			if p.Addr().Is4() == r.Subnet.Addr().Is4() && p.Overlaps(r.Subnet) {
				free = free.subtract(prefixInterval(p))
			}
		}
	}
	return &Pool{Range: r, free: free, is4: r.Subnet.Addr().Is4()}
}

// Size is the number of allocatable addresses.
func (p *Pool) Size() *big.Int { return p.free.size() }

// Contains reports whether ip may be handed out from this pool.
func (p *Pool) Contains(ip netip.Addr) bool {
	return ip.Is4() == p.is4 && p.free.contains(addrToU128(ip))
}

// After yields allocatable addresses in order, starting just after cursor and
// wrapping around, until yield returns false. An invalid cursor starts at the
// beginning of the range.
func (p *Pool) After(cursor netip.Addr, yield func(netip.Addr) bool) {
	start := prefixInterval(p.Range.Subnet).first
	if cursor.IsValid() && p.Range.Subnet.Contains(cursor) {
		start = addrToU128(cursor)
	}
	p.free.after(start, func(v u128) bool { return yield(u128ToAddr(v, p.is4)) })
}
