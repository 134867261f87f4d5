package dataplane

import (
	"context"
	"fmt"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// opBase records a repair of the base chains and jumps; the agent's memory
// does not know it, so it reads the kernel again.
const opBase = "base"

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
// otherwise leave every pod of the node open. A plugin ADD does not check
// this (a restore that checks rules reads the whole table, several
// milliseconds at scale); the agent calls it every few seconds. It
// returns a description of what it restored, empty when nothing was
// missing. Each check names one chain, which iptables reads alone.
func (d *Dataplane) EnsureBase(ctx context.Context) (string, error) {
	var missing []ruleset.Family
	for _, f := range ruleset.Families() {
		for _, c := range baseChecks() {
			if err := d.iptables(ctx, f, append([]string{"-C"}, c...)...); err != nil {
				missing = append(missing, f)
				break
			}
		}
	}
	if len(missing) == 0 {
		return "", nil
	}
	var restored []string
	err := d.locked(ctx, func() error {
		scripts := map[ruleset.Family]*script{}
		for _, f := range missing {
			t, err := d.save(ctx, f)
			if err != nil {
				return err
			}
			if !hasPodRules(t) {
				continue // no pods: podwall rightly has no chains here
			}
			s := &script{}
			ensureBase(t, s, f)
			if !s.empty() {
				scripts[f] = s
				restored = append(restored, fmt.Sprintf("%s: %d base rules", f, len(s.lines)+len(s.decls)))
			}
		}
		if len(scripts) == 0 {
			return nil // nothing written: nothing to journal
		}
		return d.journaled(opBase, "-", func() error {
			if err := firstError(d.restoreFamilies(ctx, scripts)); err != nil {
				return fmt.Errorf("restoring base chains: %w", err)
			}
			return nil
		})
	})
	if err != nil {
		return "", err
	}
	return strings.Join(restored, "; "), nil
}

// hasPodRules says whether any pod's dispatch rules are in the table.
func hasPodRules(t *table) bool {
	for _, chain := range sharedChains {
		for _, r := range t.rules(chain) {
			if _, ok := parsePodComment(r); ok {
				return true
			}
		}
	}
	return false
}
