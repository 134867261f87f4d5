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
	var links map[int]netlink.Link
	var out []ipam.NodeRoute
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
			if links == nil {
				// One dump for all devices: routed layouts have a veth per
				// pod, and a lookup per route would cost a round trip each.
				// Under heavy churn the dump may never complete; single
				// lookups are never interrupted.
				links, err = linksByIndex()
				if errors.Is(err, netlink.ErrDumpInterrupted) {
					links, err = map[int]netlink.Link{}, nil
				}
				if err != nil {
					return nil, err
				}
			}
			link, ok := links[r.LinkIndex]
			if !ok {
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
