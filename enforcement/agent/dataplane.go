package agent

import (
	"context"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// Dataplane is the part of *dataplane.Dataplane the agent uses.
type Dataplane interface {
	// Probe fails when the node cannot be enforced (missing tools or
	// matches, mixed iptables backends).
	Probe(ctx context.Context) error
	// Pods lists the attachments the plugin installed, read back from
	// the kernel.
	Pods(ctx context.Context) ([]dataplane.Pod, error)
	// Apply converges the policy chains and sets to desired, touching only
	// what differs.
	Apply(ctx context.Context, desired *ruleset.Desired) (dataplane.ApplyStats, error)
	// EnsureBase restores the jumps into podwall's chains where pods have
	// chains, and says what it restored.
	EnsureBase(ctx context.Context) (string, error)
}
