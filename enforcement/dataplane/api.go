// Package dataplane writes podwall's chains and sets into the kernel of the
// network namespace it runs in: the per-pod default-deny chains and dispatch
// the plugin installs at ADD, and the policy chains and sets the agent
// converges to. It is the only package that runs iptables and ipset.
//
// The layout it maintains is documented in README.md ("Kernel layout").
package dataplane

import (
	"net/netip"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Layout says how a pod's host-side interface is attached.
type Layout string

const (
	// LayoutBridge: the host veth is a port of a Linux bridge; pod traffic
	// is matched with physdev (bridge netfilter).
	LayoutBridge Layout = "bridge"
	// LayoutRouted: the host veth is routed (ptp); matched with -i/-o.
	LayoutRouted Layout = "routed"
)

// Pod is one attachment as the dataplane knows it.
type Pod struct {
	Key         string
	Network     string
	ContainerID string
	IfName      string
	Namespace   string
	Name        string
	// IPs of the pod; a family without one drops all traffic of that family.
	IPs       []netip.Addr
	HostIface string
	Layout    Layout
	// Bridge is the bridge the host interface is a port of (bridge
	// layout). Every port of it is dropped unless a pod's dispatch claims
	// the traffic, so a pod is denied before it has rules of its own.
	// Empty for routed pods, and for pods adopted from layouts that did
	// not record it: those get a drop rule of their own per interface.
	Bridge string
}

// Target is what an Apply converges to.
type Target struct {
	// Pods get their chains, dispatch and policy chains; pods in the
	// kernel that are neither here nor in Remove are left as they are.
	Pods []Pod
	// Remove lists the keys whose chains and dispatch go.
	Remove []string
	// Policy is the compiled policy; nil leaves policy chains and sets
	// alone, and a pod created meanwhile gets default-deny policy chains.
	Policy *ruleset.Desired
}

// Config locates the dataplane's state.
type Config struct {
	// StateDir holds the lock that every writer of podwall's iptables state
	// takes (the directory of the agent's socket).
	StateDir string
	// MaxStateAge bounds how long Apply trusts its memory of the kernel
	// between full reads; zero means DefaultMaxStateAge.
	MaxStateAge time.Duration
}

// ApplyStats says what one Apply changed.
type ApplyStats struct {
	ChainsWritten  int
	ChainsDeleted  int
	SetsCreated    int
	SetsDestroyed  int
	EntriesAdded   int
	EntriesDeleted int
	PodsWritten    int
	PodsRemoved    int
	Unchanged      bool
}
