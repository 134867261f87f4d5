package ipam

import (
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Allocate returns the addresses of att, handing out one address per active
// IP family that att does not hold yet. A repeated call returns what the first
// one gave: kubelets retry.
func Allocate(st Store, cfg *Config, att Attachment, foreign []NodeRoute) (Record, error) {
	held, stale, err := heldAllocations(st, cfg, att)
	if err != nil {
		return Record{}, err
	}
	rec := Record{Attachment: att, Allocations: held}
	var missing []int
	for _, fam := range cfg.ActiveFamilies() {
		if !slices.ContainsFunc(held, func(a Allocation) bool { return family(a.Address.Addr()) == fam }) {
			missing = append(missing, fam)
		}
	}
	if len(missing) == 0 && len(held) > 0 {
		if stale {
			// Replace a garbage record, or one listing addresses att never
			// got, so that CHECK and GC see what att really holds.
			if err := st.PutRecord(rec); err != nil {
				return Record{}, ioErrorf(err, "recording allocation of %s/%s", att.ContainerID, att.IfName)
			}
		}
		return rec, nil
	}
	if len(missing) == 0 {
		return Record{}, invalidConfig("ipam: no active range: every range is draining")
	}
	return reserve(st, cfg, rec, missing, foreign)
}

// maxLostRaces bounds how often one ADD retries after other processes took
// the address it picked. Each loss moves the cursor on, so reaching it means
// something is badly wrong, not that the node is busy.
const maxLostRaces = 256

// reserve picks and reserves one address of each missing family. Allocators
// run concurrently (only operations on the same attachment exclude each
// other), so a picked address may be taken by the time it is reserved; the
// reservation's atomic link decides, and the loser picks again. The record is
// written before each round of reservations: whatever instant the process is
// killed at, every address it holds is listed in its record.
func reserve(st Store, cfg *Config, rec Record, missing []int, foreign []NodeRoute) (Record, error) {
	att := rec.Attachment
	lost := map[netip.Addr]bool{}
	for round := 0; len(missing) > 0; round++ {
		if round > maxLostRaces {
			return Record{}, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("lost the race for %d addresses to concurrent allocations", len(lost)), "")
		}
		var picked []Allocation
		for _, fam := range missing {
			alloc, err := pick(st, cfg, fam, foreign, lost, spread(len(lost)))
			if err != nil {
				return Record{}, err
			}
			picked = append(picked, alloc)
		}
		trial := Record{Attachment: att, Allocations: append(slices.Clone(rec.Allocations), picked...)}
		if err := st.PutRecord(trial); err != nil {
			return Record{}, ioErrorf(err, "recording allocation of %s/%s", att.ContainerID, att.IfName)
		}
		missing = missing[:0]
		for _, a := range picked {
			ip := a.Address.Addr()
			err := st.Reserve(ip, att)
			if errors.Is(err, ErrReserved) {
				lost[ip] = true
				missing = append(missing, family(ip))
				continue
			}
			if err != nil {
				return Record{}, ioErrorf(err, "reserving %s", ip)
			}
			rec.Allocations = append(rec.Allocations, a)
			if err := st.SetCursor(a.Address.Masked(), ip); err != nil {
				return Record{}, ioErrorf(err, "saving cursor of %s", a.Address.Masked().String())
			}
		}
	}
	// Families in the order of the ranges, whichever won its race first.
	order := cfg.ActiveFamilies()
	slices.SortStableFunc(rec.Allocations, func(a, b Allocation) int {
		return familyRank(order, a) - familyRank(order, b)
	})
	if len(lost) > 0 {
		// The record still lists the addresses lost last; make it exact.
		if err := st.PutRecord(rec); err != nil {
			return Record{}, ioErrorf(err, "recording allocation of %s/%s", att.ContainerID, att.IfName)
		}
	}
	return rec, nil
}

// heldAllocations returns the allocations of att's record that att really
// owns. An earlier ADD killed between writing its record and reserving leaves
// entries it never got; those are dropped. stale reports that the stored
// record is garbage or lists such entries.
func heldAllocations(st Store, cfg *Config, att Attachment) (held []Allocation, stale bool, err error) {
	rec, found, err := st.Record(att)
	if errors.Is(err, ErrUnreadable) {
		// Reserving again would leave the old reservations unreachable;
		// recover them by scanning, the rare path.
		held, err := recoverAllocations(st, cfg, att)
		return held, true, err
	}
	if err != nil {
		return nil, false, ioErrorf(err, "reading record of %s/%s", att.ContainerID, att.IfName)
	}
	if !found {
		return nil, false, nil
	}
	for _, a := range rec.Allocations {
		owner, state, err := st.Owner(a.Address.Addr())
		if err != nil {
			return nil, false, ioErrorf(err, "reading reservation of %s", a.Address.Addr().String())
		}
		if state == Owned && owner == att {
			held = append(held, a)
		}
	}
	return held, len(held) != len(rec.Allocations), nil
}

func recoverAllocations(st Store, cfg *Config, att Attachment) ([]Allocation, error) {
	scan, err := st.Scan()
	if err != nil {
		return nil, ioErrorf(err, "scanning store for %s/%s", att.ContainerID, att.IfName)
	}
	var held []Allocation
	for _, r := range scan.Reservations {
		if r.State == Owned && r.Owner == att {
			// The prefix length and gateway went with the record; the
			// configured range gives them back, a host prefix otherwise.
			a := Allocation{Address: netip.PrefixFrom(r.IP, r.IP.BitLen())}
			if cfg != nil {
				if rg, ok := cfg.RangeOf(r.IP); ok {
					a = Allocation{Address: netip.PrefixFrom(r.IP, rg.Subnet.Bits()), Gateway: rg.Gateway}
				}
			}
			held = append(held, a)
		}
	}
	return held, nil
}

// spread is how many free addresses an allocator that lost races lets go by,
// at random: none before the first loss, then a window doubling with each loss
// (at most 64), so that a herd of allocators fans out over the range.
func spread(losses int) int {
	if losses == 0 {
		return 0
	}
	return rand.IntN(1 << min(losses, 6))
}

// pick finds an address of one family that looks free, in the active ranges
// in order, passing over the addresses in lost.
//
// skip passes over that many more free-looking addresses first: after lost
// races, concurrent allocators that read the same cursor would otherwise all
// try the same next address again, round after round.
func pick(st Store, cfg *Config, fam int, foreign []NodeRoute, lost map[netip.Addr]bool, skip int) (Allocation, error) {
	var reports []string
	var ioErr error
	for _, r := range cfg.Ranges {
		if r.Draining || family(r.Subnet.Addr()) != fam {
			continue
		}
		pool := cfg.Pool(r, Prefixes(foreign))
		var found, firstFree netip.Addr
		skipped := 0
		pool.After(st.Cursor(r.Subnet), func(ip netip.Addr) bool {
			if lost[ip] {
				return true
			}
			_, state, err := st.Owner(ip)
			if err != nil {
				ioErr = err
				return false
			}
			if state != Free {
				return true
			}
			if !firstFree.IsValid() {
				firstFree = ip
			}
			if skipped < skip {
				skipped++
				return true
			}
			found = ip
			return false
		})
		if !found.IsValid() {
			// Fewer free addresses than skip: take the first one.
			found = firstFree
		}
		if ioErr != nil {
			return Allocation{}, ioErrorf(ioErr, "reading reservations of %s", r.Subnet.String())
		}
		if found.IsValid() {
			return Allocation{Address: netip.PrefixFrom(found, r.Subnet.Bits()), Gateway: r.Gateway}, nil
		}
		reports = append(reports, exhaustionReport(cfg, r, pool, foreign))
	}
	return Allocation{}, types.NewError(ErrCodeExhausted, fmt.Sprintf("no free IPv%d address: %s", fam, strings.Join(reports, "; ")), "")
}

func exhaustionReport(cfg *Config, r Range, pool *Pool, foreign []NodeRoute) string {
	size := pool.Size()
	msg := fmt.Sprintf("%s exhausted: %s of %s in use", r.Subnet, size, size)
	var blocking []string
	for _, f := range foreign {
		if f.Dst.Overlaps(r.Subnet) {
			blocking = append(blocking, f.String())
		}
	}
	if len(blocking) > 0 {
		withoutRoutes := cfg.Pool(r, nil).Size()
		blocked := new(big.Int).Sub(withoutRoutes, size)
		msg += fmt.Sprintf(" (%s more are inside foreign routes of the node: %s)", blocked, strings.Join(blocking, ", "))
	}
	return msg
}

// Release frees everything att holds. Releasing an unknown attachment succeeds.
func Release(st Store, att Attachment) error {
	rec, found, err := st.Record(att)
	if errors.Is(err, ErrUnreadable) {
		held, err := recoverAllocations(st, nil, att)
		if err != nil {
			return err
		}
		rec, found = Record{Attachment: att, Allocations: held}, true
	} else if err != nil {
		return ioErrorf(err, "reading record of %s/%s", att.ContainerID, att.IfName)
	}
	if !found {
		return nil
	}
	for _, a := range rec.Allocations {
		if err := releaseIfOwned(st, a.Address.Addr(), att); err != nil {
			return err
		}
	}
	if err := st.DeleteRecord(att); err != nil {
		return ioErrorf(err, "deleting record of %s/%s", att.ContainerID, att.IfName)
	}
	return nil
}

func releaseIfOwned(st Store, ip netip.Addr, att Attachment) error {
	owner, state, err := st.Owner(ip)
	if err != nil {
		return ioErrorf(err, "reading reservation of %s", ip.String())
	}
	if state != Owned || owner != att {
		return nil
	}
	if err := st.Release(ip); err != nil {
		return ioErrorf(err, "releasing %s", ip.String())
	}
	return nil
}

// Check verifies that att holds exactly the addresses want (when want is not
// nil) and that each is reserved for it.
func Check(st Store, att Attachment, want []netip.Addr) error {
	held, stale, err := heldAllocations(st, nil, att)
	if err != nil {
		return err
	}
	rec, _, recErr := st.Record(att)
	if len(held) == 0 {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no allocation for container %s interface %s", att.ContainerID, att.IfName), "")
	}
	// A garbage record is no evidence against the reservations, which the
	// scan recovered; it is reported by the store and replaced on the next ADD.
	if stale && recErr == nil {
		return types.NewError(ErrCodeAllocationMismatch, fmt.Sprintf("allocation of %s/%s is incomplete: record lists %d addresses, %d are reserved", att.ContainerID, att.IfName, len(rec.Allocations), len(held)), "")
	}
	if want == nil {
		return nil
	}
	var got []netip.Addr
	for _, a := range held {
		got = append(got, a.Address.Addr())
	}
	slices.SortFunc(got, netip.Addr.Compare)
	want = slices.Clone(want)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		return types.NewError(ErrCodeAllocationMismatch, fmt.Sprintf("allocation of %s/%s is %v, prevResult says %v", att.ContainerID, att.IfName, got, want), "")
	}
	return nil
}

// GC releases every allocation whose attachment is not in valid, and returns
// how many addresses it released.
func GC(st Store, valid []Attachment) (int, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, v := range valid {
		keep[v] = true
	}
	scan, err := st.Scan()
	if err != nil {
		return 0, ioErrorf(err, "scanning store")
	}
	referenced := make(map[netip.Addr]bool)
	for _, rec := range scan.Records {
		if keep[rec.Attachment] {
			for _, a := range rec.Allocations {
				referenced[a.Address.Addr()] = true
			}
		}
	}
	released := 0
	for _, r := range scan.Reservations {
		// A garbage reservation cannot name its owner: one that a live
		// attachment's record lists may be that attachment's, and is kept.
		// A readable one belongs to its owner alone, whatever a stale record
		// of another attachment says.
		if (r.State == Owned && keep[r.Owner]) || (r.State == Unreadable && referenced[r.IP]) {
			continue
		}
		if err := st.Release(r.IP); err != nil {
			return released, ioErrorf(err, "releasing %s", r.IP.String())
		}
		released++
	}
	for _, rec := range scan.Records {
		if keep[rec.Attachment] {
			continue
		}
		if err := st.DeleteRecord(rec.Attachment); err != nil {
			return released, ioErrorf(err, "deleting record of %s/%s", rec.ContainerID, rec.IfName)
		}
	}
	return released, nil
}

// Available reports an error with CNI code 50 when some active family could
// not get an address now.
func Available(st Store, cfg *Config, foreign []NodeRoute) error {
	for _, fam := range cfg.ActiveFamilies() {
		if _, err := pick(st, cfg, fam, foreign, nil, 0); err != nil {
			return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
		}
	}
	if len(cfg.ActiveFamilies()) == 0 {
		return types.NewError(types.ErrPluginNotAvailable, "no active range: every range is draining", "")
	}
	return nil
}

func ioErrorf(err error, format string, args ...any) *types.Error {
	return types.NewError(types.ErrIOFailure, fmt.Sprintf(format, args...)+": "+err.Error(), "")
}

func familyRank(order []int, a Allocation) int {
	if i := slices.Index(order, family(a.Address.Addr())); i >= 0 {
		return i
	}
	return len(order)
}
