package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
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
// state is in the kernel), and a chain changed by hand is rewritten. A
// chain the plugin has just created gets its rules and fingerprint inserted
// ahead of the plugin's default deny, which stays last, never reached (see
// writeChain); the fingerprint is then the rule before it.
//
// The kernel is not read back at every Apply: the Dataplane remembers what
// it read and wrote, and the journal tells it what plugin invocations
// changed since (see JournalFile). The tables and sets are read whole
// again when the journal cannot account for every change, after any
// failure, and once the memory is older than Config.MaxStateAge.
func (d *Dataplane) Apply(ctx context.Context, desired *ruleset.Desired) (ApplyStats, error) {
	var stats ApplyStats
	if desired == nil {
		return stats, fmt.Errorf("apply: no desired state")
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	start := time.Now()
	t := applyTimings{last: start}
	err := d.locked(ctx, func() error {
		t.mark(&t.lockWait)
		st, err := d.currentState(ctx)
		t.mark(&t.readState)
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
		scripts := map[ruleset.Family]*script{}
		written := map[ruleset.Family]map[string]chainState{}
		for _, f := range ruleset.Families() {
			scripts[f] = &script{}
			written[f] = map[string]chainState{}
		}
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
			current, exists := chains[c.Name]
			if exists && current.holds(c.Rules) {
				continue
			}
			fp := fingerprint(c)
			if exists && current.hasFingerprint(fp, len(c.Rules)) {
				current.rules = c.Rules
				chains[c.Name] = current
				continue
			}
			written[c.Family][c.Name] = writeChain(scripts[c.Family], c, fp, exists && current.onlyDefaultDeny())
			stats.ChainsWritten++
		}
		// Sets still referenced by chains we leave alone must survive.
		inUse := map[string]bool{}
		for _, f := range ruleset.Families() {
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

		t.mark(&t.plan)
		if err := ipsetRestore(ctx, plan.script); err != nil {
			return err
		}
		t.mark(&t.setsBefore)
		stats.SetsCreated, stats.EntriesAdded, stats.EntriesDeleted = plan.created, plan.added, plan.dropd
		if err := firstError(d.restoreFamilies(ctx, scripts)); err != nil {
			return fmt.Errorf("writing policy chains: %w", err)
		}
		t.mark(&t.chains)
		if err := ipsetRestore(ctx, plan.grow); err != nil {
			return err
		}
		if err := ipsetRestore(ctx, destroy); err != nil {
			return err
		}
		stats.SetsDestroyed = len(destroy)
		t.mark(&t.setsAfter)

		// The kernel now holds what was written: remember it.
		for f, chains := range written {
			for name, cs := range chains {
				st.chains[f][name] = cs
			}
		}
		changed := make(map[string]bool, len(plan.changed))
		for _, name := range plan.changed {
			changed[name] = true
		}
		for _, ds := range desired.Sets {
			if !changed[ds.Name] {
				continue // the kernel's set, as remembered, is the desired one
			}
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
	d.log.Debug("apply timings", "lockWait", t.lockWait, "readState", t.readState, "plan", t.plan, "setsBefore", t.setsBefore,
		"chains", t.chains, "setsAfter", t.setsAfter, "total", time.Since(start))
	return stats, nil
}

// applyTimings say where an Apply spent its time (logged at debug level).
type applyTimings struct {
	last                                                     time.Time
	lockWait, readState, plan, setsBefore, chains, setsAfter time.Duration
}

// mark sets *d to the time since the last mark.
func (t *applyTimings) mark(d *time.Duration) {
	now := time.Now()
	*d = now.Sub(t.last)
	t.last = now
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

// writeChain adds to s what makes the kernel's chain c.Name hold c's rules
// and fingerprint, and returns the chain's state once s is committed.
//
// A chain the plugin just created holds its default deny alone. Flushing
// it would make the commit delete a rule, which costs the kernel a wait
// for an RCU grace period (~15 ms), on every pod's ADD path. Instead the
// rules and the fingerprint are inserted ahead of the default deny, in the
// same transaction, so the pod goes from deny-all to its policy at once.
// The default deny then stays behind the chain's final unconditional
// verdict, never reached; with no such verdict (not something Compile
// writes) the chain is flushed and refilled as usual.
func writeChain(s *script, c ruleset.Chain, fp string, freshDefaultDeny bool) chainState {
	fpRule := []string{"-m", "comment", "--comment", fp}
	cs := chainState{n: len(c.Rules) + 1, fp: fp, sets: setsOf(c.Rules), rules: c.Rules}
	if freshDefaultDeny && len(c.Rules) > 0 && unconditionalVerdict(c.Rules[len(c.Rules)-1]) {
		for i, r := range c.Rules {
			s.rule("-I", c.Name+" "+strconv.Itoa(i+1), r)
		}
		s.rule("-I", c.Name+" "+strconv.Itoa(len(c.Rules)+1), fpRule)
		cs.n++
		cs.denyTail = true
		return cs
	}
	s.declare(c.Name) // creates, or flushes and refills in the same transaction
	for _, r := range c.Rules {
		s.rule("-A", c.Name, r)
	}
	s.rule("-A", c.Name, fpRule)
	return cs
}

// unconditionalVerdict reports a rule that ends the chain for every packet:
// nothing but a comment, and a verdict.
func unconditionalVerdict(r ruleset.Rule) bool {
	if len(r) >= 4 && r[0] == "-m" && r[1] == "comment" && r[2] == "--comment" {
		r = r[4:]
	}
	if len(r) != 2 || r[0] != "-j" {
		return false
	}
	switch r[1] {
	case "ACCEPT", "DROP", "RETURN":
		return true
	}
	return false
}

// setsOf lists the sets that rules match on.
func setsOf(rules []ruleset.Rule) []string {
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
			return key, ruleset.ValidateChainKey(key) == nil
		}
	}
	return "", false
}

// fingerprint identifies the desired content of a chain: a hash of the
// family, the name and each argument with its length.
func fingerprint(c ruleset.Chain) string {
	h := sha256.New()
	buf := make([]byte, 0, 256)
	buf = append(append(append(append(buf, c.Family.String()...), '\n'), c.Name...), '\n')
	for _, r := range c.Rules {
		for _, a := range r {
			buf = strconv.AppendInt(buf, int64(len(a)), 10)
			buf = append(append(append(buf, ':'), a...), ';')
		}
		buf = append(buf, '\n')
		h.Write(buf)
		buf = buf[:0]
	}
	h.Write(buf)
	return "podwall: rules sha256=" + hex.EncodeToString(h.Sum(nil))[:24] + " n=" + strconv.Itoa(len(c.Rules))
}
