package ipam

import (
	"fmt"
	"net/netip"
)

// NodeRoute is what the allocator needs to know of one route of the node.
type NodeRoute struct {
	Dst netip.Prefix
	// LinkKind is the netlink kind of the output device ("bridge", "veth",
	// ...), empty for routes with no single device (multipath, blackhole).
	LinkKind string
	LinkName string
	Table    int
}

func (r NodeRoute) String() string {
	s := r.Dst.String()
	if r.LinkName != "" {
		s += " dev " + r.LinkName
	}
	if r.Table != 0 && r.Table != 254 {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	return s
}

// ForeignRoutes returns the routes of the node that overlap a configured
// range and that the pod network did not create itself. Two kinds of route are
// the pod network's own: the connected route of the pod bridge when it carries
// exactly a configured range, and a host route through a veth to an address
// this store has reserved (the routed ptp layout). Everything else inside a
// range — a VPN, a corporate static route, a connected LAN, another CNI's pod —
// means the addresses behind it are reachable elsewhere and must never be
// handed to a pod.
//
// reserved tells whether an address is reserved in our store; nil trusts any
// veth host route inside a range (for tools that have no store at hand).
//
// Default routes, and the two halves of a split default route (0.0.0.0/1 and
// 128.0.0.0/1, as VPN clients install to override the default), say where
// everything else goes, not where some network lives, and are ignored.
func (c *Config) ForeignRoutes(routes []NodeRoute, reserved func(netip.Addr) bool) []NodeRoute {
	var foreign []NodeRoute
	for _, rt := range routes {
		if rt.Dst.Bits() <= 1 || !c.OverlapsRange(rt.Dst) || c.isPodNetworkRoute(rt, reserved) {
			continue
		}
		foreign = append(foreign, rt)
	}
	return foreign
}

func (c *Config) isPodNetworkRoute(rt NodeRoute, reserved func(netip.Addr) bool) bool {
	switch rt.LinkKind {
	case "bridge":
		for _, r := range c.Ranges {
			if r.Subnet != rt.Dst {
				continue
			}
			// A draining range's bridge is the old bridge of a migration
			// (the reference bridge plugin takes one gateway per family, so
			// a new range comes with a new bridge). An active range's
			// bridge must be the main plugin's own: a docker0 that happens
			// to carry exactly the range is somebody else's network.
			if r.Draining || (c.MainPlugin == "" && c.PodBridge == "") || (c.PodBridge != "" && rt.LinkName == c.PodBridge) {
				return true
			}
		}
	case "veth":
		if !rt.Dst.IsSingleIP() {
			return false
		}
		if _, ok := c.RangeOf(rt.Dst.Addr()); !ok {
			return false
		}
		return reserved == nil || reserved(rt.Dst.Addr())
	}
	return false
}

// Prefixes returns the destinations of routes.
func Prefixes(routes []NodeRoute) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.Dst)
	}
	return out
}
