package ipam

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// poolCase describes a small pool in terms a fuzzer can drive.
type poolCase struct {
	v6     bool
	bits   uint8  // folded into 22..30 (v4) or 118..126 (v6)
	gw     uint16 // offset of the gateway in the subnet
	cursor uint16 // selects the cursor: none, outside the subnet, or an offset
	cuts   []byte // pairs (offset, length) of exclusions, service CIDRs and foreign routes
}

func (pc poolCase) build() (*Config, Range, []netip.Prefix, netip.Addr) {
	base, maxBits := netip.MustParseAddr("10.20.32.0"), 32
	if pc.v6 {
		base, maxBits = netip.MustParseAddr("fd00:1:2:3::2000"), 128
	}
	bits := maxBits - 2 - int(pc.bits)%9
	subnet := netip.PrefixFrom(base, bits).Masked()
	size := 1 << (maxBits - bits)
	at := func(off int) netip.Addr { // subnet's first address + off, off may be negative
		a := subnet.Addr()
		for ; off > 0; off-- {
			a = a.Next()
		}
		for ; off < 0; off++ {
			a = a.Prev()
		}
		return a
	}
	gwOff := int(pc.gw) % size
	if gwOff == 0 || (!pc.v6 && gwOff == size-1) {
		gwOff = 1
	}
	r := Range{Subnet: subnet, Gateway: at(gwOff)}
	cfg := &Config{Ranges: []Range{r}}
	var foreign []netip.Prefix
	for i := 0; i+1 < len(pc.cuts) && i < 24; i += 2 {
		off := int(pc.cuts[i])*size*2/256 - size/2
		plen := bits - 1 + int(pc.cuts[i+1])%(maxBits-bits+2)
		p := netip.PrefixFrom(at(off), plen).Masked()
		switch (i / 2) % 3 {
		case 0:
			cfg.Exclude = append(cfg.Exclude, p)
		case 1:
			cfg.ServiceCIDRs = append(cfg.ServiceCIDRs, p)
		default:
			foreign = append(foreign, p)
		}
	}
	var cursor netip.Addr
	switch pc.cursor % 4 {
	case 0:
	case 1:
		cursor = at(-1 - int(pc.cursor)%7)
	default:
		cursor = at(int(pc.cursor) % size)
	}
	return cfg, r, foreign, cursor
}

// modelPool is the allocatable set computed the slow, obvious way.
func modelPool(cfg *Config, r Range, foreign []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	groups := [][]netip.Prefix{cfg.Exclude, cfg.ServiceCIDRs, foreign}
	for a := r.Subnet.Addr(); a.IsValid() && r.Subnet.Contains(a); a = a.Next() {
		if a == r.Subnet.Addr() || a == r.Gateway {
			continue
		}
		if a.Is4() && !r.Subnet.Contains(a.Next()) {
			continue // broadcast
		}
		excluded := false
		for _, g := range groups {
			for _, p := range g {
				excluded = excluded || p.Contains(a)
			}
		}
		if !excluded {
			out = append(out, a)
		}
	}
	return out
}

func checkPoolAgainstModel(t *testing.T, pc poolCase) {
	t.Helper()
	cfg, r, foreign, cursor := pc.build()
	pool := cfg.Pool(r, foreign)
	model := modelPool(cfg, r, foreign)

	if got := pool.Size(); !got.IsInt64() || got.Int64() != int64(len(model)) {
		t.Fatalf("%+v: Size = %s, model has %d", pc, got, len(model))
	}
	start := r.Subnet.Addr()
	if cursor.IsValid() && r.Subnet.Contains(cursor) {
		start = cursor
	}
	var want []netip.Addr
	for _, a := range model {
		if a.Compare(start) > 0 {
			want = append(want, a)
		}
	}
	for _, a := range model {
		if a.Compare(start) <= 0 {
			want = append(want, a)
		}
	}
	var got []netip.Addr
	pool.After(cursor, func(a netip.Addr) bool {
		got = append(got, a)
		return len(got) <= len(model) // one extra to catch repeats
	})
	if !slices.Equal(got, want) {
		t.Fatalf("%+v: range %s gw %s cursor %v exclude %v services %v foreign %v:\n After gave %v\n model says %v",
			pc, r.Subnet, r.Gateway, cursor, cfg.Exclude, cfg.ServiceCIDRs, foreign, got, want)
	}
	inModel := make(map[netip.Addr]bool, len(model))
	for _, a := range model {
		inModel[a] = true
	}
	for a := r.Subnet.Addr(); r.Subnet.Contains(a); a = a.Next() {
		if pool.Contains(a) != inModel[a] {
			t.Fatalf("%+v: Contains(%s) = %v, model says %v", pc, a, pool.Contains(a), inModel[a])
		}
	}
	// Early stop after k addresses yields exactly the first k.
	if len(want) > 2 {
		k := len(want) / 2
		var part []netip.Addr
		pool.After(cursor, func(a netip.Addr) bool { part = append(part, a); return len(part) < k })
		if !slices.Equal(part, want[:k]) {
			t.Fatalf("%+v: early stop after %d gave %v, want %v", pc, k, part, want[:k])
		}
	}
}

func TestPoolAfterMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for i := 0; i < n; i++ {
		cuts := make([]byte, 2*rng.IntN(7))
		for j := range cuts {
			cuts[j] = byte(rng.UintN(256))
		}
		checkPoolAgainstModel(t, poolCase{
			v6: rng.IntN(2) == 1, bits: uint8(rng.UintN(256)), gw: uint16(rng.UintN(1 << 16)),
			cursor: uint16(rng.UintN(1 << 16)), cuts: cuts,
		})
	}
}

// FuzzAfter runs its seed corpus as a normal test; `go test -fuzz FuzzAfter
// ./ipam` explores further.
func FuzzAfter(f *testing.F) {
	f.Add(false, uint8(6), uint16(1), uint16(0), []byte{})                      // /24, no cursor
	f.Add(false, uint8(8), uint16(1), uint16(3), []byte{})                      // /30, cursor at the only address
	f.Add(true, uint8(8), uint16(1), uint16(2), []byte{})                       // /126
	f.Add(false, uint8(6), uint16(77), uint16(254), []byte{128, 2, 0, 9})       // cursor at the top: wrap
	f.Add(false, uint8(0), uint16(3), uint16(1), []byte{10, 3, 200, 1, 90, 4})  // cursor outside the subnet
	f.Add(true, uint8(0), uint16(1023), uint16(7), []byte{64, 0, 64, 0, 64, 0}) // exclusions covering the whole range
	f.Add(false, uint8(4), uint16(5), uint16(6), []byte{127, 9, 129, 9, 131, 8, 133, 7, 135, 6, 137, 5})
	f.Add(true, uint8(3), uint16(9), uint16(513), []byte{255, 255, 0, 0, 128, 128})
	f.Fuzz(func(t *testing.T, v6 bool, bits uint8, gw, cursor uint16, cuts []byte) {
		checkPoolAgainstModel(t, poolCase{v6: v6, bits: bits, gw: gw, cursor: cursor, cuts: cuts})
	})
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func afterAll(p *Pool, cursor netip.Addr) []netip.Addr {
	var out []netip.Addr
	p.After(cursor, func(a netip.Addr) bool { out = append(out, a); return len(out) < 1<<12 })
	return out
}

func TestPoolSkipsNetworkBroadcastGateway(t *testing.T) {
	cfg := &Config{}
	v4 := Range{Subnet: netip.MustParsePrefix("10.0.0.8/29"), Gateway: netip.MustParseAddr("10.0.0.12")}
	if got, want := afterAll(cfg.Pool(v4, nil), netip.Addr{}), addrs("10.0.0.9", "10.0.0.10", "10.0.0.11", "10.0.0.13", "10.0.0.14"); !slices.Equal(got, want) {
		t.Errorf("v4: got %v, want %v", got, want)
	}
	// IPv6 has no broadcast: the last address is allocatable.
	v6 := Range{Subnet: netip.MustParsePrefix("fd00::/125"), Gateway: netip.MustParseAddr("fd00::1")}
	if got, want := afterAll(cfg.Pool(v6, nil), netip.Addr{}), addrs("fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"); !slices.Equal(got, want) {
		t.Errorf("v6: got %v, want %v", got, want)
	}
}

func TestPoolRemovesExclusionsServicesAndForeign(t *testing.T) {
	cfg := &Config{
		Exclude:      []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("10.0.0.16/28")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.4/30")},
	}
	r := Range{Subnet: netip.MustParsePrefix("10.0.0.0/27"), Gateway: netip.MustParseAddr("10.0.0.1")}
	foreign := []netip.Prefix{netip.MustParsePrefix("10.0.0.12/31"), netip.MustParsePrefix("192.168.0.0/16")}
	got := afterAll(cfg.Pool(r, foreign), netip.MustParseAddr("10.0.0.10"))
	want := addrs("10.0.0.11", "10.0.0.14", "10.0.0.15", "10.0.0.3", "10.0.0.8", "10.0.0.9", "10.0.0.10")
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// A foreign route covering the range empties it.
	if size := cfg.Pool(r, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}).Size(); size.Sign() != 0 {
		t.Errorf("range inside a foreign /8 still has %s addresses", size)
	}
}

func TestPoolCursorHandling(t *testing.T) {
	cfg := &Config{}
	r := Range{Subnet: netip.MustParsePrefix("10.0.0.0/29"), Gateway: netip.MustParseAddr("10.0.0.1")}
	p := cfg.Pool(r, nil)
	all := addrs("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")
	for _, tc := range []struct {
		cursor netip.Addr
		want   []netip.Addr
	}{
		{netip.Addr{}, all},
		{netip.MustParseAddr("10.0.0.0"), all},
		{netip.MustParseAddr("10.0.0.1"), all},
		{netip.MustParseAddr("10.0.0.6"), all},
		{netip.MustParseAddr("10.0.0.7"), all},
		{netip.MustParseAddr("10.0.0.3"), addrs("10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3")},
		{netip.MustParseAddr("10.9.9.9"), all},        // outside the subnet
		{netip.MustParseAddr("::ffff:10.0.0.3"), all}, // mapped form is not the same address
		{netip.MustParseAddr("fd00::3"), all},         // other family
	} {
		if got := afterAll(p, tc.cursor); !slices.Equal(got, tc.want) {
			t.Errorf("cursor %v: got %v, want %v", tc.cursor, got, tc.want)
		}
	}
}

func TestPoolContainsOtherFamily(t *testing.T) {
	cfg := &Config{}
	p := cfg.Pool(Range{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1")}, nil)
	if !p.Contains(netip.MustParseAddr("10.0.0.5")) {
		t.Errorf("10.0.0.5 missing")
	}
	for _, s := range []string{"::ffff:10.0.0.5", "::a00:5", "10.0.1.5", "10.0.0.0", "10.0.0.1", "10.0.0.255"} {
		if p.Contains(netip.MustParseAddr(s)) {
			t.Errorf("%s should not be allocatable", s)
		}
	}
}

func TestPoolLargeV6IsLazy(t *testing.T) {
	cfg := &Config{}
	r := Range{Subnet: netip.MustParsePrefix("fd00:64:1::/64"), Gateway: netip.MustParseAddr("fd00:64:1::1")}
	p := cfg.Pool(r, nil)
	if want := "18446744073709551614"; p.Size().String() != want {
		t.Errorf("size = %s, want %s", p.Size(), want)
	}
	var got []netip.Addr
	p.After(netip.MustParseAddr("fd00:64:1::ffff:ffff:ffff:fffe"), func(a netip.Addr) bool {
		got = append(got, a)
		return len(got) < 3
	})
	if want := addrs("fd00:64:1::ffff:ffff:ffff:ffff", "fd00:64:1::2", "fd00:64:1::3"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
