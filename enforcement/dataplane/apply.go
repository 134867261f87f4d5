package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Apply converges the kernel to t: the base chains, the bridges' coverage,
// each pod's fixed chains and dispatch, its policy chains, and the sets,
// writing only what differs (see planApply), in one restore per family
// between the ipset changes that must precede and follow it. The agent is
// the one writer of all of it; the plugin writes only when the agent does
// not answer (EnsurePod, RemovePod).
//
// Which chains differ is decided by a fingerprint: every chain Apply writes
// ends with a rule that has only a comment, "podwall: rules sha256=<hash of
// the desired rules> n=<count>", placed after the chain's final verdict, so
// it is never evaluated (in a "from pod" chain, which returns, it matches
// and does nothing). A chain whose last rule carries the fingerprint of the
// desired rules and whose length matches is unchanged. This does not
// depend on how iptables-save respells rules, survives agent restarts (the
// state is in the kernel), and a chain changed by hand is rewritten.
//
// The kernel is not read back at every Apply: the Dataplane remembers what
// it read and wrote. It reads the tables and sets whole again after any
// failure and once the memory is older than Config.MaxStateAge; a write
// planned from a stale memory fails as a whole (a chain it creates exists
// already, a rule it deletes does not), which makes the next Apply read.
func (d *Dataplane) Apply(ctx context.Context, t Target) (ApplyStats, error) {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	start := time.Now()
	tm := applyTimings{last: start}
	var stats ApplyStats
	err := d.locked(ctx, func() error {
		tm.mark(&tm.lockWait)
		remembered := d.state != nil && time.Since(d.state.readAt) < d.maxStateAge
		for {
			st, err := d.currentState(ctx)
			tm.mark(&tm.readState)
			if err != nil {
				return err
			}
			// Whatever fails from here on leaves the kernel in a state
			// this memory may not describe: read it again next time.
			d.state = nil
			p, err := planApply(st, t, d.log)
			tm.mark(&tm.plan)
			if err != nil {
				return err
			}
			if err := d.execute(ctx, p, &tm); err != nil {
				if remembered {
					// Planned from memory, which someone else's write
					// (the plugin's fallback, a tamperer) made stale:
					// read everything and plan again, once.
					d.log.Info("a write planned from memory failed; reading the kernel back", "err", err)
					remembered = false
					continue
				}
				return err
			}
			d.state = p.next
			stats = p.stats
			return nil
		}
	})
	if err != nil {
		return ApplyStats{}, err
	}
	stats.Unchanged = stats == ApplyStats{}
	d.log.Debug("apply timings", "lockWait", tm.lockWait, "readState", tm.readState, "plan", tm.plan, "setsBefore", tm.setsBefore,
		"chains", tm.chains, "setsAfter", tm.setsAfter, "total", time.Since(start))
	return stats, nil
}

// execute writes a plan: sets that must change first, the rules of both
// families side by side, then the sets that must change after, and the
// sets no rule uses any more.
func (d *Dataplane) execute(ctx context.Context, p *applyPlan, tm *applyTimings) error {
	if p.sweep {
		// Before the epoch rules name a new epoch, no connection may
		// carry it from an earlier use: none is then skipped unjudged.
		if err := d.clearEpochs(nil); err != nil {
			return err
		}
	}
	if err := d.ipsetRestore(ctx, p.setsBefore); err != nil {
		return err
	}
	tm.mark(&tm.setsBefore)
	if err := firstError(d.restoreFamilies(ctx, p.scripts)); err != nil {
		return fmt.Errorf("writing podwall's chains: %w", err)
	}
	if p.sweep {
		// Connections judged meanwhile carry the epoch the old rules
		// named, which a later epoch may reuse.
		if err := d.clearEpochs(p.next); err != nil {
			return err
		}
	}
	tm.mark(&tm.chains)
	if err := d.ipsetRestore(ctx, p.setsAfter); err != nil {
		return err
	}
	if err := d.ipsetRestore(ctx, p.destroy); err != nil {
		return err
	}
	tm.mark(&tm.setsAfter)
	return nil
}

// clearEpochs clears the policy epoch of every connection of both
// families, but for the epoch that keep's tables name (nil: none kept). A
// failure fails the Apply: without the sweep, a connection judged under
// an old policy could pass unjudged.
func (d *Dataplane) clearEpochs(keep *kernelState) error {
	for _, f := range ruleset.Families() {
		var epoch uint32
		if keep != nil && keep.tables[f] != nil {
			epoch = keep.tables[f].epoch
		}
		n, err := d.flows.clearEpochs(f, epoch)
		if err != nil {
			return fmt.Errorf("sweeping conntrack before a new policy epoch: %w", err)
		}
		if n > 0 {
			d.log.Debug("connections to be judged again", "family", f, "connections", n)
		}
	}
	return nil
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
// Apply while it is young enough, or everything read back. Call it holding
// the state lock.
func (d *Dataplane) currentState(ctx context.Context) (*kernelState, error) {
	if st := d.state; st != nil && time.Since(st.readAt) < d.maxStateAge {
		return st, nil
	}
	d.state = nil
	return d.readState(ctx)
}

// writeChain adds to s what makes the kernel's chain c.Name hold c's rules
// and fingerprint, and returns the chain's state once s is committed.
//
// A chain just created without policy (the pod was attached while the
// policy could not be compiled, or by the plugin's fallback) holds its
// default deny alone. Flushing
// it would make the commit delete a rule, which costs the kernel a wait
// for an RCU grace period (~15 ms), on every pod's ADD path. Instead the
// rules and the fingerprint are inserted ahead of the default deny, in the
// same transaction, so the pod goes from deny-all to its policy at once.
// The default deny then stays behind the chain's final unconditional
// verdict, never reached; with no such verdict (not something Compile
// writes) the chain is flushed and refilled as usual.
func writeChain(s *script, c ruleset.Chain, fp string, freshDefaultDeny bool) chainState {
	fpRule := ruleset.Rule{"-m", "comment", "--comment", fp}
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
