package nodecidrs

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/podwall/podwall/ipam"
)

// Conflict is a pod CIDR of the node that overlaps a route the pod network
// did not create: addresses of the block are reachable elsewhere (a VPN, a
// corporate static route, a connected LAN) and pods given them would shadow
// or be shadowed by that network.
type Conflict struct {
	PodCIDR netip.Prefix
	Route   ipam.NodeRoute
}

func (c Conflict) String() string {
	how := "overlaps"
	switch {
	case c.Route.Dst.Bits() <= c.PodCIDR.Bits() && c.Route.Dst.Contains(c.PodCIDR.Addr()):
		how = "lies inside"
	case c.PodCIDR.Bits() < c.Route.Dst.Bits() && c.PodCIDR.Contains(c.Route.Dst.Addr()):
		how = "contains"
	}
	return fmt.Sprintf("pod CIDR %s %s the node's route %s", c.PodCIDR, how, c.Route)
}

// Conflicts returns every overlap of podCIDRs with a foreign route, by the
// IPAM's own rule (ipam.Config.ForeignRoutes): the connected route of a
// bridge carrying exactly a pod CIDR, host routes to pods through veths and
// default routes are not foreign.
func Conflicts(podCIDRs []netip.Prefix, routes []ipam.NodeRoute) []Conflict {
	var out []Conflict
	for _, p := range podCIDRs {
		cfg := ipam.Config{Ranges: []ipam.Range{{Subnet: p.Masked()}}}
		for _, r := range cfg.ForeignRoutes(routes, nil) {
			out = append(out, Conflict{PodCIDR: p.Masked(), Route: r})
		}
	}
	return out
}

// Describe joins conflicts into one message; empty for none.
func Describe(cs []Conflict) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.String()
	}
	return strings.Join(parts, "; ")
}

// ParseCIDRs parses the Node's spec.podCIDRs.
func ParseCIDRs(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node pod CIDR %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
