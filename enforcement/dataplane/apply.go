package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

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
//
// The kernel is not read back at every Apply: the Dataplane remembers what
// it read and wrote, and the journal tells it what plugin invocations
// changed since (see JournalFile). The tables and sets are read whole
// again when the journal cannot account for every change, after any
// failure, and once the memory is older than Config.MaxStateAge.
func (d *Dataplane) Apply(ctx context.Context, desired *policy.Desired) (ApplyStats, error) {
	var stats ApplyStats
	if desired == nil {
		return stats, fmt.Errorf("apply: no desired state")
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	err := d.locked(ctx, func() error {
		st, err := d.currentState(ctx)
		if err != nil {
			return err
		}
		// Whatever fails from here on leaves the kernel in a state this
		// memory may not describe: read it again next time.
		d.state = nil
		plan, err := planSets(desired.Sets, st.sets)
		if err != nil {
			return err
		}
		scripts := map[policy.Family]*script{}
		written := map[policy.Family]map[string]policy.Chain{}
		for _, f := range policy.Families() {
			scripts[f] = &script{}
			written[f] = map[string]policy.Chain{}
		}
		fingerprints := map[string]string{}
		for _, c := range desired.Chains {
			chains := st.chains[c.Family]
			if chains == nil {
				return fmt.Errorf("chain %s: unknown family %q", c.Name, c.Family)
			}
			key, ok := policyChainKey(c.Name)
			if !ok {
				return fmt.Errorf("chain %s is not a pod policy chain", c.Name)
			}
			if _, ok := chains[fromPodChain(key)]; !ok {
				continue // pod deleted, or not attached here (yet)
			}
			fp := fingerprint(c)
			if current, ok := chains[c.Name]; ok && current.hasFingerprint(fp, len(c.Rules)) {
				continue
			}
			s := scripts[c.Family]
			s.declare(c.Name) // creates, or flushes and refills in the same transaction
			for _, r := range c.Rules {
				s.rule("-A", c.Name, r)
			}
			s.rule("-A", c.Name, []string{"-m", "comment", "--comment", fp})
			written[c.Family][c.Name] = c
			fingerprints[string(c.Family)+" "+c.Name] = fp
			stats.ChainsWritten++
		}
		// Sets still referenced by chains we leave alone must survive.
		inUse := map[string]bool{}
		for _, f := range policy.Families() {
			for name, cs := range st.chains[f] {
				if _, ok := written[f][name]; ok {
					continue
				}
				for _, set := range cs.sets {
					inUse[set] = true
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
		if err := firstError(d.restoreFamilies(ctx, scripts)); err != nil {
			return fmt.Errorf("writing policy chains: %w", err)
		}
		if err := ipsetRestore(ctx, plan.grow); err != nil {
			return err
		}
		if err := ipsetRestore(ctx, destroy); err != nil {
			return err
		}
		stats.SetsDestroyed = len(destroy)

		// The kernel now holds what was written: remember it.
		for f, chains := range written {
			for name, c := range chains {
				st.chains[f][name] = chainState{n: len(c.Rules) + 1, last: fingerprints[string(f)+" "+name], sets: setsOf(c.Rules)}
			}
		}
		for _, ds := range desired.Sets {
			ks := &kernelSet{typ: string(ds.Type), family: string(ds.Family), members: make(map[string]string, len(ds.Members))}
			for _, m := range ds.Members {
				ks.members[memberKey(m)] = m
			}
			st.sets[ds.Name] = ks
		}
		for _, line := range destroy {
			delete(st.sets, strings.TrimPrefix(line, "destroy "))
		}
		d.state = st
		return nil
	})
	if err != nil {
		return ApplyStats{}, err
	}
	stats.Unchanged = stats == ApplyStats{}
	return stats, nil
}

// currentState returns what the kernel holds: the memory of the last
// Apply brought up to date from the journal, or, when that is not
// possible, everything read back. Call it holding the state lock.
func (d *Dataplane) currentState(ctx context.Context) (*kernelState, error) {
	j, jerr := d.readJournal()
	if st := d.state; st != nil && jerr == nil && time.Since(st.readAt) < d.maxStateAge {
		if entries, ok := j.since(st.epoch, st.seq); ok && st.replay(entries) {
			st.seq = j.last()
			return st, nil
		}
	}
	d.state = nil
	st, err := d.readState(ctx)
	if err != nil {
		return nil, err
	}
	if jerr != nil || j.epoch == "" {
		// Start a journal, so that the next Apply can trust this read.
		if err := d.record(opProbe, "-", false); err == nil {
			err = d.record(opProbe, "-", true)
		}
		if j, jerr = d.readJournal(); jerr != nil {
			d.log.Warn("no usable journal; every Apply reads the kernel back", "err", jerr)
			return st, nil
		}
	}
	st.epoch, st.seq = j.epoch, j.last()
	return st, nil
}

// setsOf lists the sets that rules match on.
func setsOf(rules []policy.Rule) []string {
	var out []string
	for _, r := range rules {
		for i, a := range r {
			if a == "--match-set" && i+1 < len(r) {
				out = append(out, r[i+1])
			}
		}
	}
	return out
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
