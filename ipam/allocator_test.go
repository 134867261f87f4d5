package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
)

func mustConfig(t *testing.T, ipamSection string) *ipam.Config {
	t.Helper()
	cfg, err := ipam.ParseConfig(netconf("pods", ipamSection))
	if err != nil {
		t.Fatalf("config %s: %v", ipamSection, err)
	}
	return cfg
}

func att(i int) ipam.Attachment {
	return ipam.Attachment{ContainerID: fmt.Sprintf("c%04d", i), IfName: "eth0"}
}

func addrsOf(rec ipam.Record) []netip.Addr {
	var out []netip.Addr
	for _, a := range rec.Allocations {
		out = append(out, a.Address.Addr())
	}
	return out
}

func mustAllocate(t *testing.T, st ipam.Store, cfg *ipam.Config, a ipam.Attachment, foreign []ipam.NodeRoute) ipam.Record {
	t.Helper()
	rec, err := ipam.Allocate(st, cfg, a, foreign)
	if err != nil {
		t.Fatalf("allocating for %v: %v", a, err)
	}
	return rec
}

func wantCode(t *testing.T, err error, code uint, frags ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want code %d", code)
	}
	got, msg := cniCode(t, err)
	if got != code {
		t.Errorf("code %d (%q), want %d", got, msg, code)
	}
	for _, f := range frags {
		if !strings.Contains(msg, f) {
			t.Errorf("message %q lacks %q", msg, f)
		}
	}
}

func TestAllocateInRangeOrder(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/29"},{"subnet":"10.0.1.0/30"}]}`)
	st := newMemStore()
	var got []string
	for i := 0; i < 6; i++ {
		rec := mustAllocate(t, st, cfg, att(i), nil)
		if len(rec.Allocations) != 1 {
			t.Fatalf("allocations %v", rec.Allocations)
		}
		a := rec.Allocations[0]
		got = append(got, a.Address.String()+" via "+a.Gateway.String())
	}
	want := []string{"10.0.0.2/29 via 10.0.0.1", "10.0.0.3/29 via 10.0.0.1", "10.0.0.4/29 via 10.0.0.1", "10.0.0.5/29 via 10.0.0.1", "10.0.0.6/29 via 10.0.0.1", "10.0.1.2/30 via 10.0.1.1"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	_, err := ipam.Allocate(st, cfg, att(99), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "10.0.0.0/29 exhausted: 5 of 5 in use", "10.0.1.0/30 exhausted: 1 of 1 in use")
	if _, found, _ := st.Record(att(99)); found {
		t.Errorf("a failed ADD left a record")
	}
}

func TestAllocateOnePerActiveFamily(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.9.0.0/24","draining":true},{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/120","gateway":"fd00::fe"},{"subnet":"10.1.0.0/24"},{"subnet":"fd01::/120"}]}`)
	st := newMemStore()
	rec := mustAllocate(t, st, cfg, att(1), nil)
	want := []ipam.Allocation{
		{Address: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.0.0.1")},
		{Address: netip.MustParsePrefix("fd00::1/120"), Gateway: netip.MustParseAddr("fd00::fe")},
	}
	if !slices.Equal(rec.Allocations, want) || rec.Attachment != att(1) {
		t.Errorf("got %+v, want %+v", rec, want)
	}
	if len(st.reservations) != 2 {
		t.Errorf("reservations %v", st.reservations)
	}
	v6only := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24","draining":true},{"subnet":"fd00::/120"}]}`)
	rec = mustAllocate(t, st, v6only, att(2), nil)
	if got := addrsOf(rec); len(got) != 1 || !got[0].Is6() {
		t.Errorf("v6-only allocation %v", got)
	}
}

func TestAllocateIsIdempotent(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	first := mustAllocate(t, st, cfg, att(1), nil)
	ops := st.ops
	for i := 0; i < 3; i++ {
		again := mustAllocate(t, st, cfg, att(1), nil)
		if !slices.Equal(again.Allocations, first.Allocations) {
			t.Fatalf("retry gave %v, first ADD %v", again.Allocations, first.Allocations)
		}
	}
	if st.ops != ops {
		t.Errorf("a retried ADD wrote to the store (%d mutations)", st.ops-ops)
	}
	other := mustAllocate(t, st, cfg, ipam.Attachment{ContainerID: att(1).ContainerID, IfName: "net1"}, nil)
	for _, a := range addrsOf(other) {
		if slices.Contains(addrsOf(first), a) {
			t.Errorf("second interface of the container got %s too", a)
		}
	}
	if len(st.reservations) != 4 {
		t.Errorf("reservations %v", st.reservations)
	}
}

func TestAllocateCompletesANewFamily(t *testing.T) {
	st := newMemStore()
	v4 := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	first := mustAllocate(t, st, v4, att(1), nil)
	dual := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	rec := mustAllocate(t, st, dual, att(1), nil)
	if len(rec.Allocations) != 2 || rec.Allocations[0] != first.Allocations[0] || !rec.Allocations[1].Address.Addr().Is6() {
		t.Fatalf("got %v", rec.Allocations)
	}
	if stored, _, _ := st.Record(att(1)); !slices.Equal(stored.Allocations, rec.Allocations) {
		t.Errorf("record %v, result %v", stored.Allocations, rec.Allocations)
	}
	if err := ipam.Check(st, att(1), addrsOf(rec)); err != nil {
		t.Error(err)
	}
}

func TestDrainingRange(t *testing.T) {
	st := newMemStore()
	old := mustConfig(t, `{"ranges":[{"subnet":"10.244.1.0/29"}]}`)
	a1 := mustAllocate(t, st, old, att(1), nil)
	a2 := mustAllocate(t, st, old, att(2), nil)

	migrating := mustConfig(t, `{"ranges":[{"subnet":"10.244.1.0/29","draining":true},{"subnet":"100.64.1.0/30"}]}`)
	again := mustAllocate(t, st, migrating, att(1), nil)
	if !slices.Equal(again.Allocations, a1.Allocations) {
		t.Errorf("ADD retry during migration gave %v, want %v", again.Allocations, a1.Allocations)
	}
	if err := ipam.Check(st, att(1), addrsOf(a1)); err != nil {
		t.Errorf("CHECK of a draining allocation: %v", err)
	}
	if err := ipam.Release(st, att(2)); err != nil {
		t.Fatal(err)
	}
	a3 := mustAllocate(t, st, migrating, att(3), nil)
	if got := addrsOf(a3); len(got) != 1 || got[0] != netip.MustParseAddr("100.64.1.2") {
		t.Errorf("new pod got %v, want the new range's only address", got)
	}
	// The new range is full; the draining one has free addresses (att 2's
	// among them) and still none is handed out.
	_, err := ipam.Allocate(st, migrating, att(4), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "100.64.1.0/30 exhausted: 1 of 1 in use")
	if _, msg := cniCode(t, err); strings.Contains(msg, "10.244.1.0/29") {
		t.Errorf("exhaustion report mentions the draining range: %q", msg)
	}
	if owner, state, _ := st.Owner(addrsOf(a2)[0]); state != ipam.Free {
		t.Errorf("released draining address is %v by %v", state, owner)
	}
	if err := ipam.Release(st, att(1)); err != nil {
		t.Fatal(err)
	}
	if len(st.reservations) != 1 || len(st.records) != 1 {
		t.Errorf("left %v / %v", st.reservations, st.records)
	}
	allDraining := mustConfig(t, `{"ranges":[{"subnet":"10.244.1.0/29","draining":true}]}`)
	_, err = ipam.Allocate(st, allDraining, att(5), nil)
	wantCode(t, err, types.ErrInvalidNetworkConfig, "draining")
}

// The example of the issue: 256 addresses less network, broadcast, gateway
// and an excluded /26 leave 189.
const issueConfig = `{"type":"podwall-ipam",
	"ranges":[{"subnet":"10.244.1.0/24","draining":true},{"subnet":"100.64.1.0/24","gateway":"100.64.1.1"}],
	"exclude":["100.64.1.128/26"],"serviceCIDRs":["10.96.0.0/12"]}`

func TestExhaustion(t *testing.T) {
	cfg := mustConfig(t, issueConfig)
	st := newMemStore()
	excluded := netip.MustParsePrefix("100.64.1.128/26")
	seen := map[netip.Addr]bool{}
	for i := 0; i < 189; i++ {
		rec := mustAllocate(t, st, cfg, att(i), nil)
		ip := addrsOf(rec)[0]
		if seen[ip] || excluded.Contains(ip) || !netip.MustParsePrefix("100.64.1.0/24").Contains(ip) ||
			ip == netip.MustParseAddr("100.64.1.0") || ip == netip.MustParseAddr("100.64.1.1") || ip == netip.MustParseAddr("100.64.1.255") {
			t.Fatalf("allocation %d got %s", i, ip)
		}
		seen[ip] = true
	}
	ops := st.ops
	_, err := ipam.Allocate(st, cfg, att(189), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "100.64.1.0/24 exhausted: 189 of 189 in use")
	if _, msg := cniCode(t, err); strings.Contains(msg, "foreign") {
		t.Errorf("message blames routes that do not exist: %q", msg)
	}
	if st.ops != ops {
		t.Errorf("a failed ADD wrote to the store")
	}
	if err := ipam.Available(st, cfg, nil); err == nil {
		t.Errorf("Available on an exhausted range")
	} else {
		wantCode(t, err, types.ErrPluginNotAvailable, "exhausted")
	}
}

func TestExhaustionNamesForeignRoutes(t *testing.T) {
	cfg := mustConfig(t, issueConfig)
	st := newMemStore()
	foreign := []ipam.NodeRoute{{Dst: netip.MustParsePrefix("100.64.1.0/26"), LinkKind: "wireguard", LinkName: "wg0"}}
	for i := 0; i < 127; i++ {
		rec := mustAllocate(t, st, cfg, att(i), foreign)
		if ip := addrsOf(rec)[0]; foreign[0].Dst.Contains(ip) {
			t.Fatalf("handed out %s inside the foreign route", ip)
		}
	}
	_, err := ipam.Allocate(st, cfg, att(127), foreign)
	wantCode(t, err, ipam.ErrCodeExhausted, "100.64.1.0/24 exhausted: 127 of 127 in use", "62 more", "100.64.1.0/26 dev wg0")
	// Without the route the same ADD succeeds: the rule is live.
	rec := mustAllocate(t, st, cfg, att(127), nil)
	if ip := addrsOf(rec)[0]; !foreign[0].Dst.Contains(ip) {
		t.Errorf("got %s, want an address freed by the route's removal", ip)
	}
}

func TestDualStackExhaustionAllocatesNothing(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/126"}]}`)
	st := newMemStore()
	mustAllocate(t, st, cfg, att(1), nil)
	mustAllocate(t, st, cfg, att(2), nil)
	before := len(st.reservations)
	_, err := ipam.Allocate(st, cfg, att(3), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "IPv6", "fd00::/126 exhausted: 2 of 2 in use")
	if len(st.reservations) != before {
		t.Errorf("the IPv4 half was reserved although IPv6 failed")
	}
	wantCode(t, ipam.Available(st, cfg, nil), types.ErrPluginNotAvailable, "fd00::/126")
}

func TestForeignRouteAddedMidRun(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	st := newMemStore()
	for i := 0; i < 10; i++ {
		mustAllocate(t, st, cfg, att(i), nil)
	}
	vpn := []ipam.NodeRoute{{Dst: netip.MustParsePrefix("10.0.0.0/25"), LinkKind: "tun", LinkName: "tun0"}}
	for i := 10; i < 100; i++ {
		if ip := addrsOf(mustAllocate(t, st, cfg, att(i), vpn))[0]; vpn[0].Dst.Contains(ip) {
			t.Fatalf("handed out %s after the route appeared", ip)
		}
	}
	// Addresses held before the route appeared stay held.
	if err := ipam.Check(st, att(3), nil); err != nil {
		t.Error(err)
	}
}

func TestAllocatorNeverHandsOutGarbageReservations(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/29"}]}`)
	st := newMemStore()
	st.garbageReservations[netip.MustParseAddr("10.0.0.2")] = true
	st.garbageReservations[netip.MustParseAddr("10.0.0.4")] = true
	var got []netip.Addr
	for i := 0; i < 3; i++ {
		got = append(got, addrsOf(mustAllocate(t, st, cfg, att(i), nil))...)
	}
	if want := addrs("10.0.0.3", "10.0.0.5", "10.0.0.6"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	_, err := ipam.Allocate(st, cfg, att(9), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "5 of 5 in use")
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestUnreadableRecordIsRecovered(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	first := mustAllocate(t, st, cfg, att(1), nil)
	mustAllocate(t, st, cfg, att(2), nil)
	st.garbageRecords[att(1)] = true
	delete(st.records, att(1))

	again := mustAllocate(t, st, cfg, att(1), nil)
	if !slices.Equal(again.Allocations, first.Allocations) {
		t.Errorf("ADD with a garbage record gave %v, want %v (no second address)", again.Allocations, first.Allocations)
	}
	if len(st.reservations) != 4 || st.garbageRecords[att(1)] {
		t.Errorf("reservations %v, garbage records %v", st.reservations, st.garbageRecords)
	}

	st.garbageRecords[att(1)] = true
	delete(st.records, att(1))
	// The reservations are the truth when the record is garbage.
	if err := ipam.Check(st, att(1), addrsOf(first)); err != nil {
		t.Errorf("CHECK of a pod whose record is garbage: %v", err)
	}
	wantCode(t, ipam.Check(st, att(1), addrsOf(first)[:1]), ipam.ErrCodeAllocationMismatch)
	if err := ipam.Release(st, att(1)); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrsOf(first) {
		if _, state, _ := st.Owner(a); state != ipam.Free {
			t.Errorf("%s still reserved after DEL", a)
		}
	}
	if st.garbageRecords[att(1)] || len(st.reservations) != 2 {
		t.Errorf("DEL left %v / %v", st.garbageRecords, st.reservations)
	}
}

func TestRelease(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/29"},{"subnet":"fd00::/125"}]}`)
	st := newMemStore()
	rec := mustAllocate(t, st, cfg, att(1), nil)
	mustAllocate(t, st, cfg, att(2), nil)
	for i := 0; i < 2; i++ {
		if err := ipam.Release(st, att(1)); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
	if err := ipam.Release(st, ipam.Attachment{ContainerID: "never-seen", IfName: "eth0"}); err != nil {
		t.Errorf("releasing an unknown attachment: %v", err)
	}
	for _, a := range addrsOf(rec) {
		if _, state, _ := st.Owner(a); state != ipam.Free {
			t.Errorf("%s still reserved", a)
		}
	}
	if _, found, _ := st.Record(att(1)); found || len(st.reservations) != 2 || len(st.records) != 1 {
		t.Errorf("after DEL: record found %v, reservations %v", found, st.reservations)
	}
	wantCode(t, ipam.Check(st, att(1), nil), types.ErrUnknownContainer, att(1).ContainerID)
}

func TestReleaseSparesAddressesOfOthers(t *testing.T) {
	// A record can list an address its attachment never got (killed before
	// reserving) that another attachment holds now.
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	st := newMemStore()
	rec := mustAllocate(t, st, cfg, att(2), nil)
	st.records[att(1)] = ipam.Record{Attachment: att(1), Allocations: rec.Allocations}
	if err := ipam.Release(st, att(1)); err != nil {
		t.Fatal(err)
	}
	if err := ipam.Check(st, att(2), addrsOf(rec)); err != nil {
		t.Errorf("DEL of a stale record freed another pod's address: %v", err)
	}
	if _, found, _ := st.Record(att(1)); found {
		t.Errorf("stale record kept")
	}
}

func TestWholeRangeReusableAfterRelease(t *testing.T) {
	// 64 addresses less network, broadcast (v4) or one exclusion (v6), gateway.
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/26"},{"subnet":"fd00::/122"}],"exclude":["fd00::3f"]}`)
	st := newMemStore()
	const n = 61
	fill := func(round int) map[netip.Addr]bool {
		seen := map[netip.Addr]bool{}
		for i := 0; i < n; i++ {
			for _, a := range addrsOf(mustAllocate(t, st, cfg, att(round*1000+i), nil)) {
				if seen[a] {
					t.Fatalf("round %d: %s handed out twice", round, a)
				}
				seen[a] = true
			}
		}
		if _, err := ipam.Allocate(st, cfg, att(round*1000+n), nil); err == nil {
			t.Fatalf("round %d: range not exhausted after %d", round, n)
		}
		return seen
	}
	first := fill(0)
	for i := 0; i < n; i++ {
		if err := ipam.Release(st, att(i)); err != nil {
			t.Fatal(err)
		}
	}
	if len(st.reservations) != 0 || len(st.records) != 0 {
		t.Fatalf("left %v %v", st.reservations, st.records)
	}
	if err := ipam.Available(st, cfg, nil); err != nil {
		t.Errorf("Available after release: %v", err)
	}
	second := fill(1)
	if len(first) != len(second) {
		t.Errorf("first fill %d addresses, second %d", len(first), len(second))
	}
	for a := range second {
		if !first[a] {
			t.Errorf("%s only in the second fill", a)
		}
	}
}

func TestGC(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	for i := 1; i <= 4; i++ {
		mustAllocate(t, st, cfg, att(i), nil)
	}
	// Garbage reservations: one listed in a valid attachment's record
	// (its owner may be that attachment), one referenced by nobody.
	kept, dropped := netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("10.0.0.201")
	st.garbageReservations[kept] = true
	st.garbageReservations[dropped] = true
	rec1 := st.records[att(1)]
	rec1.Allocations = append(rec1.Allocations, ipam.Allocation{Address: netip.PrefixFrom(kept, 24)})
	st.records[att(1)] = rec1
	// A reservation of a valid attachment whose record is garbage.
	st.reservations[netip.MustParseAddr("10.0.0.202")] = att(5)
	st.garbageRecords[att(5)] = true

	released, err := ipam.GC(st, []ipam.Attachment{att(1), att(3), att(5)})
	if err != nil {
		t.Fatal(err)
	}
	if released != 5 { // two of att 2, two of att 4, the unreferenced garbage
		t.Errorf("released %d, want 5", released)
	}
	for _, a := range []int{1, 3} {
		if err := ipam.Check(st, att(a), nil); err != nil && a == 3 {
			t.Errorf("valid attachment %d: %v", a, err)
		}
	}
	for _, a := range []int{2, 4} {
		if _, found, _ := st.Record(att(a)); found {
			t.Errorf("record of collected attachment %d kept", a)
		}
		wantCode(t, ipam.Check(st, att(a), nil), types.ErrUnknownContainer)
	}
	if !st.garbageReservations[kept] || st.garbageReservations[dropped] {
		t.Errorf("garbage reservations after GC: %v", st.garbageReservations)
	}
	if st.reservations[netip.MustParseAddr("10.0.0.202")] != att(5) {
		t.Errorf("reservation of valid attachment 5 released")
	}
	if len(st.reservations) != 5 { // 2 + 2 + att 5's
		t.Errorf("reservations %v", st.reservations)
	}

	// GC is idempotent.
	if released, err := ipam.GC(st, []ipam.Attachment{att(1), att(3), att(5)}); err != nil || released != 0 {
		t.Errorf("second GC released %d: %v", released, err)
	}
	// An empty valid list releases everything readable.
	if _, err := ipam.GC(st, nil); err != nil {
		t.Fatal(err)
	}
	if len(st.reservations) != 0 || len(st.garbageReservations) != 0 || len(st.records) != 0 {
		t.Errorf("after GC of everything: %v %v %v", st.reservations, st.garbageReservations, st.records)
	}
}

func TestGCReleasesAddressesHeldByCollectedAttachments(t *testing.T) {
	// att 1 was killed between writing its record and reserving; att 2 then
	// took the address. Once att 2 is gone, GC must free the address even
	// though att 1's stale record still lists it.
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	st := newMemStore()
	rec2 := mustAllocate(t, st, cfg, att(2), nil)
	st.records[att(1)] = ipam.Record{Attachment: att(1), Allocations: rec2.Allocations}
	if _, err := ipam.GC(st, []ipam.Attachment{att(1)}); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := st.Record(att(2)); found {
		t.Errorf("record of collected attachment kept")
	}
	if owner, state, _ := st.Owner(addrsOf(rec2)[0]); state != ipam.Free {
		t.Errorf("%s still reserved (%v by %v) by an attachment GC collected: leaked until the next GC", addrsOf(rec2)[0], state, owner)
	}
}

func TestCheck(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	rec := mustAllocate(t, st, cfg, att(1), nil)
	other := mustAllocate(t, st, cfg, att(2), nil)
	got := addrsOf(rec)
	if err := ipam.Check(st, att(1), nil); err != nil {
		t.Errorf("CHECK without prevResult: %v", err)
	}
	if err := ipam.Check(st, att(1), got); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := ipam.Check(st, att(1), []netip.Addr{got[1], got[0]}); err != nil {
		t.Errorf("CHECK depends on order: %v", err)
	}
	wantCode(t, ipam.Check(st, att(1), got[:1]), ipam.ErrCodeAllocationMismatch, got[0].String())
	wantCode(t, ipam.Check(st, att(1), []netip.Addr{}), ipam.ErrCodeAllocationMismatch)
	wantCode(t, ipam.Check(st, att(1), addrsOf(other)), ipam.ErrCodeAllocationMismatch, other.Allocations[0].Address.Addr().String())
	wantCode(t, ipam.Check(st, att(1), append(slices.Clone(got), netip.MustParseAddr("10.0.0.99"))), ipam.ErrCodeAllocationMismatch)
	wantCode(t, ipam.Check(st, att(3), nil), types.ErrUnknownContainer, att(3).ContainerID)

	// A reservation lost (or turned to garbage) behind the record's back.
	delete(st.reservations, got[1])
	wantCode(t, ipam.Check(st, att(1), nil), ipam.ErrCodeAllocationMismatch, "incomplete")
	st.garbageReservations[got[1]] = true
	wantCode(t, ipam.Check(st, att(1), got), ipam.ErrCodeAllocationMismatch)
	// Every address gone: missing.
	delete(st.reservations, got[0])
	wantCode(t, ipam.Check(st, att(1), got), types.ErrUnknownContainer)
}

func TestAvailable(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/30"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	if err := ipam.Available(st, cfg, nil); err != nil {
		t.Errorf("empty store: %v", err)
	}
	wantCode(t, ipam.Available(st, cfg, []ipam.NodeRoute{{Dst: netip.MustParsePrefix("10.0.0.0/16")}}), types.ErrPluginNotAvailable, "10.0.0.0/30", "10.0.0.0/16")
	mustAllocate(t, st, cfg, att(1), nil)
	ops := st.ops
	wantCode(t, ipam.Available(st, cfg, nil), types.ErrPluginNotAvailable, "10.0.0.0/30 exhausted")
	if st.ops != ops {
		t.Errorf("Available wrote to the store")
	}
	drained := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24","draining":true}]}`)
	wantCode(t, ipam.Available(newMemStore(), drained, nil), types.ErrPluginNotAvailable, "draining")
}

func TestOutsideWriterConflict(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	st := newMemStore()
	st.failOp = func(op string) error {
		if op == "Reserve" {
			return ipam.ErrReserved
		}
		return nil
	}
	// Every address "lost" to the outside writer: nothing is held, and the
	// error names the range.
	_, err := ipam.Allocate(st, cfg, att(1), nil)
	wantCode(t, err, ipam.ErrCodeExhausted, "10.0.0.0/24")
	st.failOp = nil
	rec := mustAllocate(t, st, cfg, att(1), nil)
	if err := ipam.Check(st, att(1), addrsOf(rec)); err != nil {
		t.Error(err)
	}
}

func TestRecordWithoutReservation(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	crashAtReserve := func(st *memStore) {
		st.failOp = func(op string) error {
			if op == "Reserve" {
				return errCrash
			}
			return nil
		}
		if _, err := ipam.Allocate(st, cfg, att(1), nil); err == nil {
			t.Fatal("ADD survived its crash")
		}
		st.failOp = nil
		if rec, found, _ := st.Record(att(1)); !found || len(rec.Allocations) != 2 || len(st.reservations) != 0 {
			t.Fatalf("setup: record %v (found %v), reservations %v", rec, found, st.reservations)
		}
	}

	t.Run("ADD retried", func(t *testing.T) {
		st := newMemStore()
		crashAtReserve(st)
		rec := mustAllocate(t, st, cfg, att(1), nil)
		if len(rec.Allocations) != 2 || len(st.reservations) != 2 {
			t.Errorf("retry gave %v, reservations %v", rec.Allocations, st.reservations)
		}
		if err := ipam.Check(st, att(1), addrsOf(rec)); err != nil {
			t.Error(err)
		}
	})
	t.Run("another ADD first", func(t *testing.T) {
		st := newMemStore()
		crashAtReserve(st)
		stale, _, _ := st.Record(att(1))
		rec2 := mustAllocate(t, st, cfg, att(2), nil)
		rec1 := mustAllocate(t, st, cfg, att(1), nil)
		if !slices.Equal(addrsOf(rec2), addrsOf(stale)) {
			t.Logf("att 2 got %v, stale record listed %v", addrsOf(rec2), addrsOf(stale))
		}
		for _, a := range addrsOf(rec1) {
			if slices.Contains(addrsOf(rec2), a) {
				t.Fatalf("%s handed to both attachments", a)
			}
		}
		if err := ipam.Release(st, att(1)); err != nil {
			t.Fatal(err)
		}
		if err := ipam.Check(st, att(2), addrsOf(rec2)); err != nil {
			t.Errorf("DEL of att 1 hurt att 2: %v", err)
		}
	})
	t.Run("DEL", func(t *testing.T) {
		st := newMemStore()
		crashAtReserve(st)
		if err := ipam.Release(st, att(1)); err != nil {
			t.Fatal(err)
		}
		if len(st.records) != 0 || len(st.reservations) != 0 {
			t.Errorf("left %v %v", st.records, st.reservations)
		}
	})
	t.Run("GC", func(t *testing.T) {
		st := newMemStore()
		crashAtReserve(st)
		if n, err := ipam.GC(st, []ipam.Attachment{att(1)}); err != nil || n != 0 {
			t.Fatalf("GC keeping att 1: %d, %v", n, err)
		}
		if n, err := ipam.GC(st, nil); err != nil || n != 0 {
			t.Fatalf("GC: %d, %v", n, err)
		}
		if len(st.records) != 0 || len(st.reservations) != 0 {
			t.Errorf("left %v %v", st.records, st.reservations)
		}
	})
}

// step is one operation of a runtime against the allocator.
type step struct {
	op string // "add", "del", "gc"
	a  int
}

// TestKilledAtEveryMutation kills an operation at each of its mutations in
// turn and lets the runtime recover the way it does (retry, or DEL after a
// failed ADD). The store must end exact: each live attachment holding one
// address per family, nothing else reserved, no address twice.
func TestKilledAtEveryMutation(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/29"},{"subnet":"fd00::/125"}]}`)
	script := []step{{"add", 1}, {"add", 2}, {"add", 1}, {"del", 1}, {"add", 3}, {"gc", 0}, {"add", 4}, {"del", 2}, {"add", 1}, {"del", 9}, {"gc", 0}, {"add", 2}}

	run := func(st *memStore, alive map[ipam.Attachment]bool, s step) error {
		switch s.op {
		case "add":
			_, err := ipam.Allocate(st, cfg, att(s.a), nil)
			if err == nil {
				alive[att(s.a)] = true
			}
			return err
		case "del":
			err := ipam.Release(st, att(s.a))
			if err == nil {
				delete(alive, att(s.a))
			}
			return err
		default:
			var valid []ipam.Attachment
			for a := range alive {
				valid = append(valid, a)
			}
			_, err := ipam.GC(st, valid)
			return err
		}
	}
	// Count the mutations of a clean run.
	clean, cleanAlive := newMemStore(), map[ipam.Attachment]bool{}
	for _, s := range script {
		if err := run(clean, cleanAlive, s); err != nil {
			t.Fatalf("clean run: %v", err)
		}
	}
	total := clean.ops

	for _, strategy := range []string{"retry", "retry later", "undo"} {
		for kill := 0; kill < total; kill++ {
			st := newMemStore()
			alive := map[ipam.Attachment]bool{}
			mutations := 0
			st.failOp = func(string) error {
				if mutations == kill {
					return errCrash
				}
				mutations++
				return nil
			}
			killedAt := -1
			for i, s := range script {
				if err := run(st, alive, s); err != nil {
					if !errors.Is(err, errCrash) && !strings.Contains(err.Error(), errCrash.Error()) {
						t.Fatalf("kill %d: step %d: unexpected %v", kill, i, err)
					}
					killedAt = i
					break
				}
			}
			if killedAt < 0 {
				t.Fatalf("kill %d: no step died", kill)
			}
			st.failOp = nil
			name := fmt.Sprintf("%s, killed at mutation %d in step %d %v", strategy, kill, killedAt, script[killedAt])
			checkReachable(t, name, st)

			killed := script[killedAt]
			rest := script[killedAt+1:]
			var recovery []step
			switch {
			case strategy == "retry":
				recovery = append([]step{killed}, rest...)
			case strategy == "retry later":
				recovery = append(slices.Clone(rest), killed)
			case killed.op == "add":
				recovery = append([]step{{"del", killed.a}}, rest...)
			default:
				recovery = append([]step{killed}, rest...)
			}
			for _, s := range recovery {
				if err := run(st, alive, s); err != nil {
					t.Fatalf("%s: recovery step %v: %v", name, s, err)
				}
			}
			checkExact(t, name, st, alive, 2)
			if n, err := ipam.GC(st, keys(alive)); err != nil || n != 0 {
				t.Errorf("%s: final GC released %d (%v): something leaked", name, n, err)
			}
		}
	}
}

func keys(m map[ipam.Attachment]bool) []ipam.Attachment {
	var out []ipam.Attachment
	for k := range m {
		out = append(out, k)
	}
	return out
}

// checkReachable asserts the store's crash invariant: every reservation is
// listed in its owner's record.
func checkReachable(t *testing.T, name string, st *memStore) {
	t.Helper()
	for ip, owner := range st.reservations {
		rec, ok := st.records[owner]
		if !ok || !slices.Contains(addrsOf(rec), ip) {
			t.Errorf("%s: reservation %s of %v is not listed in its record %v", name, ip, owner, rec)
		}
	}
}

func checkExact(t *testing.T, name string, st *memStore, alive map[ipam.Attachment]bool, perAttachment int) {
	t.Helper()
	held := map[netip.Addr]ipam.Attachment{}
	for a := range alive {
		if err := ipam.Check(st, a, nil); err != nil {
			t.Errorf("%s: CHECK of live %v: %v", name, a, err)
		}
		rec := st.records[a]
		if len(rec.Allocations) != perAttachment {
			t.Errorf("%s: %v holds %v", name, a, rec.Allocations)
		}
		for _, ip := range addrsOf(rec) {
			if prev, dup := held[ip]; dup {
				t.Errorf("%s: %s held by %v and %v", name, ip, prev, a)
			}
			held[ip] = a
		}
	}
	if len(st.reservations) != len(held) || len(st.garbageReservations) != 0 {
		t.Errorf("%s: %d reservations for %d live addresses: %v", name, len(st.reservations), len(held), st.reservations)
	}
	for rec := range st.records {
		if !alive[rec] {
			t.Errorf("%s: record of dead %v left", name, rec)
		}
	}
}

func TestRetryRewritesStaleRecord(t *testing.T) {
	// Killed after reserving IPv4 and before reserving IPv6; by the retry
	// the admin has dropped IPv6. The record must end up listing only what
	// the attachment holds, or CHECK fails forever.
	dual := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]}`)
	st := newMemStore()
	reserves := 0
	st.failOp = func(op string) error {
		if op == "Reserve" {
			reserves++
			if reserves == 2 {
				return errCrash
			}
		}
		return nil
	}
	if _, err := ipam.Allocate(st, dual, att(1), nil); err == nil {
		t.Fatal("ADD survived its crash")
	}
	st.failOp = nil
	wantCode(t, ipam.Check(st, att(1), nil), ipam.ErrCodeAllocationMismatch, "incomplete")

	v4 := mustConfig(t, `{"ranges":[{"subnet":"10.0.0.0/24"}]}`)
	rec := mustAllocate(t, st, v4, att(1), nil)
	if got := addrsOf(rec); len(got) != 1 || !got[0].Is4() {
		t.Fatalf("retry gave %v", got)
	}
	if stored, _, _ := st.Record(att(1)); !slices.Equal(stored.Allocations, rec.Allocations) {
		t.Errorf("record still lists %v", stored.Allocations)
	}
	if err := ipam.Check(st, att(1), addrsOf(rec)); err != nil {
		t.Errorf("CHECK after the retry: %v", err)
	}
}
