package report

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/podwall/podwall/ipam"
)

// State tells what an allocated address is worth today.
type State string

const (
	// StateActive: inside a range that hands out addresses.
	StateActive State = "active"
	// StateDraining: inside a draining range; the pod should be recreated.
	StateDraining State = "draining"
	// StateForeignRoute: inside a route of the node that the pod network
	// did not create, so the pod cannot reach whatever is behind that route.
	StateForeignRoute State = "foreign-route"
	// StateUnknownRange: in no configured range (a range was removed).
	StateUnknownRange State = "unknown-range"
	// StateUnreadable: the reservation is garbage; the address stays taken.
	StateUnreadable State = "unreadable"
)

// Row is one allocated address.
type Row struct {
	Network     string
	IP          netip.Addr
	ContainerID string
	IfName      string
	// Range is the configured range holding IP; invalid when there is none.
	Range  netip.Prefix
	State  State
	Detail string
}

// Listing is the content of one or more networks' stores.
type Listing struct {
	Rows     []Row
	Warnings []string
}

// NetworkStore is what was read of one network's directory.
type NetworkStore struct {
	Network string
	// Config gives the ranges; nil when they are unknown.
	Config *ipam.Config
	// Foreign are the node's foreign routes for Config.
	Foreign []ipam.NodeRoute
	Scan    ipam.Scan
}

// List classifies every reserved address of the networks, sorted by network
// then address.
func List(stores []NetworkStore) Listing {
	var l Listing
	for _, store := range stores {
		for _, res := range store.Scan.Reservations {
			l.Rows = append(l.Rows, classify(store, res))
		}
		for _, p := range store.Scan.Problems {
			l.Warnings = append(l.Warnings, fmt.Sprintf("network %s: %s", store.Network, p))
		}
	}
	SortRows(l.Rows)
	return l
}

func classify(store NetworkStore, res ipam.Reservation) Row {
	row := Row{Network: store.Network, IP: res.IP, ContainerID: res.Owner.ContainerID, IfName: res.Owner.IfName}
	var rg ipam.Range
	inRange := false
	if store.Config != nil {
		rg, inRange = store.Config.RangeOf(res.IP)
	}
	if inRange {
		row.Range = rg.Subnet
	}
	route, inRoute := routeContaining(store.Foreign, res.IP)
	switch {
	case res.State == ipam.Unreadable:
		row.State = StateUnreadable
		row.Detail = "reservation file is garbage; the address stays taken until GC"
	case store.Config == nil:
		row.State = StateUnknownRange
		row.Detail = "ranges unknown: no usable configuration"
	case !inRange:
		row.State = StateUnknownRange
		if inRoute {
			row.Detail = "inside route " + route.String()
		}
	case inRoute:
		row.State = StateForeignRoute
		row.Detail = "inside route " + route.String()
	case rg.Draining:
		row.State = StateDraining
	default:
		row.State = StateActive
	}
	return row
}

func routeContaining(routes []ipam.NodeRoute, ip netip.Addr) (ipam.NodeRoute, bool) {
	for _, r := range routes {
		if r.Dst.Contains(ip) {
			return r, true
		}
	}
	return ipam.NodeRoute{}, false
}

// SortRows orders rows by network, then numerically by address (IPv4 first).
func SortRows(rows []Row) {
	slices.SortStableFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), a.IP.Compare(b.IP))
	})
}
