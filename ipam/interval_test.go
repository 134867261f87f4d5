package ipam

import (
	"math/big"
	"net/netip"
	"slices"
	"testing"
)

func u(s string) u128 { return addrToU128(netip.MustParseAddr(s)) }

func iv(first, last string) interval { return interval{u(first), u(last)} }

func TestAddrU128RoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "::1", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "1:2:3:4:5:6:7:8"} {
		a := netip.MustParseAddr(s)
		if got := u128ToAddr(addrToU128(a), a.Is4()); got != a {
			t.Errorf("round trip of %s gave %s", a, got)
		}
	}
}

func TestU128CarryAcrossHalves(t *testing.T) {
	a := u("::ffff:ffff:ffff:ffff")
	b := u("0:0:0:1::")
	if a.inc() != b {
		t.Errorf("inc(%v) = %v, want %v", a, a.inc(), b)
	}
	if b.dec() != a {
		t.Errorf("dec(%v) = %v, want %v", b, b.dec(), a)
	}
	if d := b.sub(a); d != (u128{0, 1}) {
		t.Errorf("sub = %v, want 1", d)
	}
	if c := a.cmp(b); c != -1 {
		t.Errorf("cmp = %d", c)
	}
	max := u128{^uint64(0), ^uint64(0)}
	if max.inc() != (u128{}) || (u128{}).dec() != max {
		t.Errorf("wrap of u128 arithmetic is not modular")
	}
}

func TestPrefixInterval(t *testing.T) {
	pow2 := func(n uint) *big.Int { return new(big.Int).Lsh(big.NewInt(1), n) }
	for _, tc := range []struct {
		prefix, first, last string
		size                *big.Int
	}{
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255", pow2(32)},
		{"10.0.0.0/8", "10.0.0.0", "10.255.255.255", pow2(24)},
		{"100.64.1.0/24", "100.64.1.0", "100.64.1.255", pow2(8)},
		{"10.1.2.3/32", "10.1.2.3", "10.1.2.3", big.NewInt(1)},
		{"10.1.2.2/31", "10.1.2.2", "10.1.2.3", big.NewInt(2)},
		{"255.255.255.255/32", "255.255.255.255", "255.255.255.255", big.NewInt(1)},
		{"::/0", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", pow2(128)},
		{"fd00::/8", "fd00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", pow2(120)},
		{"fd00:64:1::/63", "fd00:64:1::", "fd00:64:1:1:ffff:ffff:ffff:ffff", pow2(65)},
		{"fd00:64:1::/64", "fd00:64:1::", "fd00:64:1::ffff:ffff:ffff:ffff", pow2(64)},
		{"fd00:64:1::/65", "fd00:64:1::", "fd00:64:1:0:7fff:ffff:ffff:ffff", pow2(63)},
		{"fd00::/120", "fd00::", "fd00::ff", pow2(8)},
		{"fd00::2/127", "fd00::2", "fd00::3", big.NewInt(2)},
		{"fd00::7/128", "fd00::7", "fd00::7", big.NewInt(1)},
	} {
		p := netip.MustParsePrefix(tc.prefix)
		got := prefixInterval(p)
		want := iv(tc.first, tc.last)
		if got != want {
			t.Errorf("prefixInterval(%s) = [%s, %s], want [%s, %s]", p,
				u128ToAddr(got.first, p.Addr().Is4()), u128ToAddr(got.last, p.Addr().Is4()), tc.first, tc.last)
		}
		if size := (intervalSet{got}).size(); size.Cmp(tc.size) != 0 {
			t.Errorf("size of %s = %s, want %s", p, size, tc.size)
		}
	}
	// Host bits are ignored: the interval is that of the masked prefix.
	if got, want := prefixInterval(netip.MustParsePrefix("10.1.2.3/24")), iv("10.1.2.0", "10.1.2.255"); got != want {
		t.Errorf("unmasked prefix: got %v, want %v", got, want)
	}
}

func TestSubtract(t *testing.T) {
	base := intervalSet{iv("10.0.0.10", "10.0.0.20"), iv("10.0.0.30", "10.0.0.40")}
	for _, tc := range []struct {
		name string
		cut  interval
		want intervalSet
	}{
		{"before everything", iv("10.0.0.0", "10.0.0.9"), base},
		{"after everything", iv("10.0.0.41", "10.0.0.255"), base},
		{"in the gap", iv("10.0.0.21", "10.0.0.29"), base},
		{"first address", iv("10.0.0.10", "10.0.0.10"), intervalSet{iv("10.0.0.11", "10.0.0.20"), iv("10.0.0.30", "10.0.0.40")}},
		{"last address", iv("10.0.0.40", "10.0.0.40"), intervalSet{iv("10.0.0.10", "10.0.0.20"), iv("10.0.0.30", "10.0.0.39")}},
		{"overlapping the start", iv("10.0.0.5", "10.0.0.12"), intervalSet{iv("10.0.0.13", "10.0.0.20"), iv("10.0.0.30", "10.0.0.40")}},
		{"overlapping the end", iv("10.0.0.18", "10.0.0.25"), intervalSet{iv("10.0.0.10", "10.0.0.17"), iv("10.0.0.30", "10.0.0.40")}},
		{"middle splits", iv("10.0.0.14", "10.0.0.15"), intervalSet{iv("10.0.0.10", "10.0.0.13"), iv("10.0.0.16", "10.0.0.20"), iv("10.0.0.30", "10.0.0.40")}},
		{"exactly one interval", iv("10.0.0.10", "10.0.0.20"), intervalSet{iv("10.0.0.30", "10.0.0.40")}},
		{"spanning both", iv("10.0.0.15", "10.0.0.35"), intervalSet{iv("10.0.0.10", "10.0.0.14"), iv("10.0.0.36", "10.0.0.40")}},
		{"covering all", iv("0.0.0.0", "255.255.255.255"), intervalSet{}},
		{"adjacent below", iv("10.0.0.9", "10.0.0.9"), base},
		{"adjacent above", iv("10.0.0.41", "10.0.0.41"), base},
	} {
		got := base.subtract(tc.cut)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	// Subtraction at the very ends of the 128-bit space must not wrap.
	all := intervalSet{prefixInterval(netip.MustParsePrefix("::/0"))}
	got := all.subtract(iv("::", "::")).subtract(iv("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
	if want := (intervalSet{iv("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")}); !slices.Equal(got, want) {
		t.Errorf("ends of ::/0: got %v, want %v", got, want)
	}
	if size, want := got.size(), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(2)); size.Cmp(want) != 0 {
		t.Errorf("size = %s, want %s", size, want)
	}
	if (intervalSet{}).size().Sign() != 0 {
		t.Errorf("empty set has a size")
	}
}

func TestContains(t *testing.T) {
	s := intervalSet{iv("10.0.0.10", "10.0.0.20"), iv("10.0.0.22", "10.0.0.22"), iv("10.0.0.30", "10.0.0.40")}
	in := []string{"10.0.0.10", "10.0.0.15", "10.0.0.20", "10.0.0.22", "10.0.0.30", "10.0.0.40"}
	out := []string{"0.0.0.0", "10.0.0.9", "10.0.0.21", "10.0.0.23", "10.0.0.29", "10.0.0.41", "255.255.255.255", "::a00:a"}
	for _, a := range in {
		if !s.contains(u(a)) {
			t.Errorf("%s should be in the set", a)
		}
	}
	for _, a := range out {
		if s.contains(u(a)) {
			t.Errorf("%s should not be in the set", a)
		}
	}
	if (intervalSet{}).contains(u("10.0.0.1")) {
		t.Errorf("empty set contains something")
	}
}

func collectAfter(s intervalSet, start u128, limit int) []u128 {
	var out []u128
	s.after(start, func(v u128) bool {
		out = append(out, v)
		return len(out) < limit
	})
	return out
}

func TestIntervalSetAfter(t *testing.T) {
	s := intervalSet{iv("::2", "::3"), iv("::6", "::6"), iv("::9", "::a")}
	order := func(names ...string) []u128 {
		var out []u128
		for _, n := range names {
			out = append(out, u(n))
		}
		return out
	}
	for _, tc := range []struct {
		start string
		want  []u128
	}{
		{"::", order("::2", "::3", "::6", "::9", "::a")},
		{"::2", order("::3", "::6", "::9", "::a", "::2")},
		{"::3", order("::6", "::9", "::a", "::2", "::3")},
		{"::4", order("::6", "::9", "::a", "::2", "::3")},
		{"::6", order("::9", "::a", "::2", "::3", "::6")},
		{"::9", order("::a", "::2", "::3", "::6", "::9")},
		{"::a", order("::2", "::3", "::6", "::9", "::a")},
		{"::ff", order("::2", "::3", "::6", "::9", "::a")},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", order("::2", "::3", "::6", "::9", "::a")},
	} {
		if got := collectAfter(s, u(tc.start), 100); !slices.Equal(got, tc.want) {
			t.Errorf("after %s: got %v, want %v", tc.start, got, tc.want)
		}
	}
	if got := collectAfter(s, u("::3"), 2); !slices.Equal(got, order("::6", "::9")) {
		t.Errorf("early stop: got %v", got)
	}
	if got := collectAfter(nil, u("::3"), 100); len(got) != 0 {
		t.Errorf("empty set yielded %v", got)
	}
	// Huge sets are iterated lazily.
	huge := intervalSet{prefixInterval(netip.MustParsePrefix("::/0"))}
	if got := collectAfter(huge, u("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), 3); !slices.Equal(got, order("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::", "::1")) {
		t.Errorf("wrap at the top of the space: got %v", got)
	}
}
