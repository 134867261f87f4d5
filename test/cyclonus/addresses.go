package cyclonus

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
)

// ExcludeAllBut returns the prefixes covering the IPv4 subnet except the
// addresses keep, so that an IPAM told to avoid them (exclusions, routes)
// hands out exactly keep, in ascending order: which pod gets which address
// then depends only on the order the pods are added in, and the ipBlock
// peers cyclonus derives from z/c's address split the pods as planned.
func ExcludeAllBut(subnet netip.Prefix, keep []string) []string {
	u32 := func(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }
	var kept []uint32
	for _, s := range keep {
		kept = append(kept, u32(netip.MustParseAddr(s)))
	}
	slices.Sort(kept)
	first := u32(subnet.Masked().Addr())
	last := first | (1<<(32-subnet.Bits()) - 1)
	var out []string
	cover := func(lo, hi uint32) {
		for lo <= hi {
			size := uint64(1) << min(bits.TrailingZeros32(lo), 32)
			for uint64(lo)+size-1 > uint64(hi) {
				size >>= 1
			}
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], lo)
			out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 32-bits.TrailingZeros64(size)).String())
			if uint64(lo)+size > uint64(hi) {
				return
			}
			lo += uint32(size)
		}
	}
	next := first
	for _, k := range kept {
		if k > next {
			cover(next, k-1)
		}
		next = k + 1
	}
	if next <= last && next != 0 {
		cover(next, last)
	}
	return out
}
