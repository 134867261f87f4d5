package dataplane

import (
	"context"
	"fmt"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// baseChecks are the rules without which pod traffic would bypass
// podwall: the jumps from FORWARD and INPUT, and the rule of
// PODWALL-FORWARD that the current layout adds.
func baseChecks() [][]string {
	var out [][]string
	for _, j := range baseJumps {
		out = append(out, append([]string{j.builtin}, j.args...))
	}
	return append(out, append([]string{chainForward}, notClaimedRule()...))
}

// EnsureBase checks that traffic reaches podwall's chains wherever pods
// have them, and restores what is missing: someone flushing FORWARD would
// otherwise leave every pod of the node open. The agent calls it every
// few seconds. It returns a description of what it restored, empty when
// nothing was missing. Each check names one chain, which iptables reads
// alone.
func (d *Dataplane) EnsureBase(ctx context.Context) (string, error) {
	var missing []string
	for _, f := range ruleset.Families() {
		for _, c := range baseChecks() {
			if err := d.iptables(ctx, f, append([]string{"-C"}, c...)...); err != nil {
				missing = append(missing, fmt.Sprintf("%s: %s", f, c[0]))
				break
			}
		}
	}
	if len(missing) == 0 {
		return "", nil
	}
	// A full read, then what the base lacks wherever pods have chains
	// (nothing where no pod has: podwall rightly has no chains there).
	wrote, err := d.applyRead(ctx, Target{})
	if err != nil {
		return "", fmt.Errorf("restoring base chains: %w", err)
	}
	if !wrote {
		return "", nil
	}
	return "missing " + strings.Join(missing, ", "), nil
}
