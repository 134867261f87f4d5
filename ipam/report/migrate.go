package report

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/podwall/podwall/ipam"
)

// Pod is what the migration needs to know of a pod, as plain values: the
// thin layer reads it from the API server.
type Pod struct {
	Namespace, Name string
	// UID tells the pod apart from a replacement of the same name.
	UID string
	// IPs are the pod's status.podIPs.
	IPs         []netip.Addr
	HostNetwork bool
	// Finished: phase Succeeded or Failed; its sandbox, and so its
	// address, is already released.
	Finished bool
	// Terminating: deletionTimestamp is set; it is already going.
	Terminating bool
	// Mirror: the API's copy of a static pod; evicting it recreates the
	// mirror, not the pod, so only a restart on the node moves it.
	Mirror bool
	// Controlled: a controller owns it and recreates it once evicted.
	Controlled bool
}

// DrainingAddress is one address of a pod inside a draining range.
type DrainingAddress struct {
	IP    netip.Addr
	Range netip.Prefix
}

// MigrationCandidate is a pod holding at least one address in a draining
// range: it has to be recreated to leave it.
type MigrationCandidate struct {
	Pod       Pod
	Addresses []DrainingAddress
}

// DrainingRanges returns the subnets of cfg's draining ranges, in order.
func DrainingRanges(cfg *ipam.Config) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range cfg.Ranges {
		if r.Draining {
			out = append(out, r.Subnet)
		}
	}
	return out
}

// PodsToMigrate returns the pods with an address in one of the draining
// ranges, sorted by namespace and name so that runs are repeatable.
// Host-network pods carry the node's addresses, never one of ours, and
// finished pods hold none any more: both are left out.
func PodsToMigrate(draining []netip.Prefix, pods []Pod) []MigrationCandidate {
	var out []MigrationCandidate
	for _, p := range pods {
		if p.HostNetwork || p.Finished {
			continue
		}
		var addrs []DrainingAddress
		for _, ip := range p.IPs {
			ip = ip.Unmap()
			for _, r := range draining {
				if r.Contains(ip) {
					addrs = append(addrs, DrainingAddress{IP: ip, Range: r})
					break
				}
			}
		}
		if len(addrs) > 0 {
			out = append(out, MigrationCandidate{Pod: p, Addresses: addrs})
		}
	}
	slices.SortFunc(out, func(a, b MigrationCandidate) int {
		return cmp.Or(cmp.Compare(a.Pod.Namespace, b.Pod.Namespace), cmp.Compare(a.Pod.Name, b.Pod.Name))
	})
	return out
}

// MergeDraining returns the union of several lists of draining ranges,
// without duplicates, in first-seen order.
func MergeDraining(lists ...[]netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, l := range lists {
		for _, p := range l {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}
