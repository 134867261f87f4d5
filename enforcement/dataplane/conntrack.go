package dataplane

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// flowTable is the conntrack table of the calling thread's network
// namespace, as far as policy epochs are concerned (see epochMask).
type flowTable interface {
	// clearEpochs removes the epoch from the mark of every connection of
	// family f judged under another epoch than keep (0: under any), so
	// that its next packet is judged by the chains again. It returns how
	// many connections it changed.
	clearEpochs(f ruleset.Family, keep uint32) (int, error)
}

// netlinkFlows is the kernel's conntrack table, through ctnetlink.
type netlinkFlows struct{}

func (netlinkFlows) clearEpochs(f ruleset.Family, keep uint32) (int, error) {
	family := netlink.InetFamily(unix.AF_INET)
	if f == ruleset.IPv6 {
		family = unix.AF_INET6
	}
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		return 0, fmt.Errorf("listing %s connections: %w", f, err)
	}
	changed := 0
	for _, flow := range flows {
		epoch := (flow.Mark & epochMask) >> epochShift
		if epoch == 0 || epoch == keep {
			continue
		}
		flow.Mark &^= epochMask
		// Only the mark changes; protocol state is the kernel's to keep
		// (and ctnetlink takes it back for TCP only).
		flow.ProtoInfo = nil
		if err := netlink.ConntrackUpdate(netlink.ConntrackTable, family, flow); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // ended meanwhile
			}
			return changed, fmt.Errorf("clearing the policy epoch of %s connection %s: %w", f, flow, err)
		}
		changed++
	}
	return changed, nil
}
