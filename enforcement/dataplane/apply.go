package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/podwall/podwall/enforcement/policy"
)

// Apply converges the policy chains (PODWALL-IN-*/OUT-*) and sets to
// desired, writing only what differs from the kernel, in the order that
// never lets a rule reference a missing set and never accepts, even for a
// moment, a packet that both the old and the new state refuse: new sets
// created and filled and existing sets shrunk, then the changed chains
// rewritten (one restore per family), then existing sets grown, then sets
// no rule uses any more destroyed (see setPlan). Chains of pods whose
// static chains are gone are skipped (the pod was deleted meanwhile).
// Static chains, dispatch and base chains are never touched.
//
// Which chains differ is decided by a fingerprint: every chain Apply writes
// ends with a rule that has only a comment, "podwall: rules sha256=<hash of
// the desired rules> n=<count>", placed after the chain's final verdict, so
// it is never evaluated. A chain whose last rule carries the fingerprint of
// the desired rules and whose length matches is unchanged. This does not
// depend on how iptables-save respells rules, survives agent restarts (the
// state is in the kernel), and a chain changed by hand is rewritten.
func (d *Dataplane) Apply(ctx context.Context, desired *policy.Desired) (ApplyStats, error) {
	var stats ApplyStats
	if desired == nil {
		return stats, fmt.Errorf("apply: no desired state")
	}
	err := d.locked(ctx, func() error {
		tables := map[policy.Family]*table{}
		for _, f := range policy.Families() {
			t, err := d.save(ctx, f)
			if err != nil {
				return err
			}
			tables[f] = t
		}
		kernelSets, err := readSets(ctx)
		if err != nil {
			return err
		}
		plan, err := planSets(desired.Sets, kernelSets)
		if err != nil {
			return err
		}
		scripts := map[policy.Family]*script{}
		written := map[policy.Family]map[string]bool{}
		for _, f := range policy.Families() {
			scripts[f] = &script{}
			written[f] = map[string]bool{}
		}
		for _, c := range desired.Chains {
			t := tables[c.Family]
			if t == nil {
				return fmt.Errorf("chain %s: unknown family %q", c.Name, c.Family)
			}
			key, ok := policyChainKey(c.Name)
			if !ok {
				return fmt.Errorf("chain %s is not a pod policy chain", c.Name)
			}
			if !t.has(fromPodChain(key)) {
				continue // pod deleted, or not attached here (yet)
			}
			fp := fingerprint(c)
			if current := t.rules(c.Name); len(current) == len(c.Rules)+1 && strings.Contains(current[len(current)-1], fp) {
				continue
			}
			s := scripts[c.Family]
			s.declare(c.Name) // creates, or flushes and refills in the same transaction
			for _, r := range c.Rules {
				s.rule("-A", c.Name, r)
			}
			s.rule("-A", c.Name, []string{"-m", "comment", "--comment", fp})
			written[c.Family][c.Name] = true
			stats.ChainsWritten++
		}
		// Sets still referenced by chains we leave alone must survive.
		inUse := map[string]bool{}
		for _, f := range policy.Families() {
			for name, ch := range tables[f].chains {
				if written[f][name] {
					continue
				}
				for _, r := range ch.rules {
					for _, m := range matchSetRE.FindAllStringSubmatch(r, -1) {
						inUse[m[1]] = true
					}
				}
			}
		}
		var destroy []string
		for _, name := range plan.destroy {
			if inUse[name] {
				d.log.Warn("ipset no longer desired but still referenced; kept", "set", name)
				continue
			}
			destroy = append(destroy, "destroy "+name)
		}
		slices.Sort(destroy)

		if err := ipsetRestore(ctx, plan.script); err != nil {
			return err
		}
		stats.SetsCreated, stats.EntriesAdded, stats.EntriesDeleted = plan.created, plan.added, plan.dropd
		for _, f := range policy.Families() {
			if err := d.restore(ctx, f, scripts[f]); err != nil {
				return fmt.Errorf("writing policy chains: %w", err)
			}
		}
		if err := ipsetRestore(ctx, plan.grow); err != nil {
			return err
		}
		if err := ipsetRestore(ctx, destroy); err != nil {
			return err
		}
		stats.SetsDestroyed = len(destroy)
		return nil
	})
	if err != nil {
		return ApplyStats{}, err
	}
	stats.Unchanged = stats == ApplyStats{}
	return stats, nil
}

var matchSetRE = regexp.MustCompile(`--match-set (\S+) `)

func policyChainKey(name string) (string, bool) {
	for _, prefix := range []string{chainPrefix + "IN-", chainPrefix + "OUT-"} {
		if key, ok := strings.CutPrefix(name, prefix); ok {
			return key, policy.ValidateChainKey(key) == nil
		}
	}
	return "", false
}

// fingerprint identifies the desired content of a chain.
func fingerprint(c policy.Chain) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", c.Family, c.Name)
	for _, r := range c.Rules {
		for _, a := range r {
			fmt.Fprintf(h, "%d:%s;", len(a), a)
		}
		h.Write([]byte{'\n'})
	}
	return fmt.Sprintf("podwall: rules sha256=%s n=%d", hex.EncodeToString(h.Sum(nil))[:24], len(c.Rules))
}
