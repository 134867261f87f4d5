package ipam

import (
	"math/big"
	"net/netip"
	"slices"
)

// u128 is an address as a 128-bit integer, so that IPv4 and IPv6 ranges share
// one interval arithmetic. IPv4 addresses are kept in their 4-byte form by the
// callers; the integer form only ever meets addresses of one family at a time.
type u128 struct{ hi, lo uint64 }

func addrToU128(a netip.Addr) u128 {
	b := a.As16()
	var v u128
	for i := 0; i < 8; i++ {
		v.hi = v.hi<<8 | uint64(b[i])
		v.lo = v.lo<<8 | uint64(b[i+8])
	}
	return v
}

func u128ToAddr(v u128, is4 bool) netip.Addr {
	var b [16]byte
	for i := 7; i >= 0; i-- {
		b[i] = byte(v.hi)
		b[i+8] = byte(v.lo)
		v.hi >>= 8
		v.lo >>= 8
	}
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

func (v u128) cmp(o u128) int {
	switch {
	case v.hi < o.hi:
		return -1
	case v.hi > o.hi:
		return 1
	case v.lo < o.lo:
		return -1
	case v.lo > o.lo:
		return 1
	}
	return 0
}

func (v u128) inc() u128 {
	lo := v.lo + 1
	hi := v.hi
	if lo == 0 {
		hi++
	}
	return u128{hi, lo}
}

func (v u128) dec() u128 {
	lo := v.lo - 1
	hi := v.hi
	if v.lo == 0 {
		hi--
	}
	return u128{hi, lo}
}

func (v u128) sub(o u128) u128 {
	lo := v.lo - o.lo
	hi := v.hi - o.hi
	if v.lo < o.lo {
		hi--
	}
	return u128{hi, lo}
}

func (v u128) big() *big.Int {
	b := new(big.Int).SetUint64(v.hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(v.lo))
}

// interval is an inclusive span of addresses [first, last].
type interval struct{ first, last u128 }

func prefixInterval(p netip.Prefix) interval {
	p = p.Masked()
	first := addrToU128(p.Addr())
	hostBits := p.Addr().BitLen() - p.Bits()
	last := first
	switch {
	case hostBits >= 128:
		last = u128{^uint64(0), ^uint64(0)}
	case hostBits >= 64:
		last.lo = ^uint64(0)
		last.hi |= (uint64(1) << (hostBits - 64)) - 1
	case hostBits > 0:
		last.lo |= (uint64(1) << hostBits) - 1
	}
	return interval{first, last}
}

// intervalSet is a sorted list of disjoint, non-adjacent intervals.
type intervalSet []interval

// subtract removes cut from every interval of the set.
func (s intervalSet) subtract(cut interval) intervalSet {
	out := make(intervalSet, 0, len(s)+1)
	for _, iv := range s {
		if cut.last.cmp(iv.first) < 0 || cut.first.cmp(iv.last) > 0 {
			out = append(out, iv)
			continue
		}
		if cut.first.cmp(iv.first) > 0 {
			out = append(out, interval{iv.first, cut.first.dec()})
		}
		if cut.last.cmp(iv.last) < 0 {
			out = append(out, interval{cut.last.inc(), iv.last})
		}
	}
	return out
}

// size is the number of addresses in the set.
func (s intervalSet) size() *big.Int {
	total := new(big.Int)
	for _, iv := range s {
		total.Add(total, iv.last.sub(iv.first).big())
		total.Add(total, big.NewInt(1))
	}
	return total
}

func (s intervalSet) contains(v u128) bool {
	_, found := slices.BinarySearchFunc(s, v, func(iv interval, v u128) int {
		if iv.last.cmp(v) < 0 {
			return -1
		}
		if iv.first.cmp(v) > 0 {
			return 1
		}
		return 0
	})
	return found
}

// after yields the addresses of the set in order, starting just after start
// and wrapping around to the beginning, each address at most once. It stops
// early when yield returns false. Iteration is lazy: the cost is proportional
// to the addresses visited, not to the size of the set.
func (s intervalSet) after(start u128, yield func(u128) bool) {
	if len(s) == 0 {
		return
	}
	// First index whose interval ends after start.
	idx, _ := slices.BinarySearchFunc(s, start, func(iv interval, v u128) int {
		if iv.last.cmp(v) <= 0 {
			return -1
		}
		return 1
	})
	visit := func(iv interval, from u128) bool {
		for v := from; ; v = v.inc() {
			if !yield(v) {
				return false
			}
			if v == iv.last {
				return true
			}
		}
	}
	for i := idx; i < len(s); i++ {
		from := s[i].first
		if i == idx && start.cmp(from) >= 0 {
			from = start.inc()
		}
		if !visit(s[i], from) {
			return
		}
	}
	for i := 0; i < len(s) && i <= idx; i++ {
		iv := s[i]
		if i == idx {
			if start.cmp(iv.first) < 0 {
				return // the first pass visited all of it
			}
			iv.last = minU128(iv.last, start)
		}
		if !visit(iv, iv.first) {
			return
		}
	}
}

func minU128(a, b u128) u128 {
	if a.cmp(b) < 0 {
		return a
	}
	return b
}
