// Package noderoutes reads the routing tables of the network namespace the
// process runs in, for the allocator's foreign-route rule.
package noderoutes

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podwall/podwall/ipam"
)

// Read returns the unicast, blackhole, unreachable and prohibit routes of
// every table except the local one, with the kind of their output device.
// Only routes for which relevant returns true are returned (nil: all): the
// device lookups are paid only for them.
func Read(relevant func(netip.Prefix) bool) ([]ipam.NodeRoute, error) {
	// A dump interrupted by a concurrent change (pods coming and going) is
	// retried: a partial table could hide exactly the route that must not be
	// collided with.
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	type candidate struct {
		route netlink.Route
		nr    ipam.NodeRoute
	}
	var candidates []candidate
	lookups := 0
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_LOCAL || r.Dst == nil {
			continue
		}
		switch r.Type {
		case unix.RTN_UNICAST, unix.RTN_BLACKHOLE, unix.RTN_UNREACHABLE, unix.RTN_PROHIBIT:
		default:
			continue
		}
		addr, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		nr := ipam.NodeRoute{Dst: netip.PrefixFrom(addr.Unmap(), ones).Masked(), Table: r.Table}
		if relevant != nil && !relevant(nr.Dst) {
			continue
		}
		if r.LinkIndex > 0 && len(r.MultiPath) == 0 {
			lookups++
		}
		candidates = append(candidates, candidate{r, nr})
	}
	// Devices are looked up one by one when few routes need one (a bridge
	// node: its links are mostly pod veths, which a dump would all parse),
	// and dumped once when many do (a routed layout has a route and a veth
	// per pod). Under heavy churn a dump may never complete; single lookups
	// are never interrupted.
	links := map[int]netlink.Link{}
	if lookups > singleLookups {
		dumped, err := linksByIndex()
		switch {
		case errors.Is(err, netlink.ErrDumpInterrupted):
		case err != nil:
			return nil, err
		default:
			links = dumped
		}
	}
	var out []ipam.NodeRoute
	for _, c := range candidates {
		r, nr := c.route, c.nr
		if r.LinkIndex > 0 && len(r.MultiPath) == 0 {
			link, ok := links[r.LinkIndex]
			if !ok {
				var err error
				if link, err = netlink.LinkByIndex(r.LinkIndex); err != nil {
					var notFound netlink.LinkNotFoundError
					if errors.As(err, &notFound) {
						// Gone since the route dump: so is its route.
						continue
					}
					return nil, fmt.Errorf("looking up device %d of route %s: %w", r.LinkIndex, r.Dst, err)
				}
				links[r.LinkIndex] = link
			}
			nr.LinkKind = link.Type()
			nr.LinkName = link.Attrs().Name
		}
		out = append(out, nr)
	}
	return out, nil
}

// singleLookups is how many device lookups are cheaper than one dump of
// every link.
const singleLookups = 8

func linksByIndex() (map[int]netlink.Link, error) {
	list, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, err
	}
	m := make(map[int]netlink.Link, len(list))
	for _, l := range list {
		m[l.Attrs().Index] = l
	}
	return m, nil
}

// retryDump repeats a netlink dump that a concurrent change interrupted, with
// a short growing pause, for at most about 100 ms.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for attempt := 0; attempt < 12; attempt++ {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		time.Sleep(time.Duration(attempt*attempt) * 100 * time.Microsecond)
	}
	return nil, err
}
