package dataplane

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// applyPlan is everything one Apply writes, in the order it is written,
// and the state the kernel holds once it all succeeded. Planning is pure:
// it reads a kernelState and a Target and runs nothing.
type applyPlan struct {
	// setsBefore creates and fills new sets and shrinks existing ones,
	// before any rule changes (see setPlan).
	setsBefore []string
	// scripts are one iptables-restore per family.
	scripts map[ruleset.Family]*script
	// setsAfter grows existing sets once the rules are in place.
	setsAfter []string
	// destroy removes the sets no rule uses any more, last.
	destroy []string
	// sweep: the epoch rules are written anew or the epoch wraps, so a
	// connection may carry the epoch that starts. The epoch bits of every
	// connection are cleared before the rules are written, and those of
	// any other epoch than the new one after (see execute).
	sweep bool
	// setsNarrowed: an existing set of the family is to match fewer
	// addresses.
	setsNarrowed map[ruleset.Family]bool
	next         *kernelState
	stats        ApplyStats
}

// planApply plans the writes that make the kernel hold t, given that it
// holds st now:
//
//   - the base chains and the jumps into them while any pod has chains,
//     and none of it once the last pod's chains are gone;
//   - the coverage of every bridge that pods are ports of;
//   - each pod's fixed chains and dispatch (podLayout), created with -N
//     when st does not know them, so that a stale st fails the whole
//     transaction instead of writing twice;
//   - each pod's policy chains, by fingerprint;
//   - the removal of the keys in t.Remove;
//   - the sets, ordered so that no moment of the update allows a packet
//     that both the old and the new state deny.
func planApply(st *kernelState, t Target, log *slog.Logger) (*applyPlan, error) {
	layouts := map[ruleset.Family][]podLayout{}
	removing := map[string]bool{}
	for _, key := range t.Remove {
		if err := ruleset.ValidateChainKey(key); err != nil {
			return nil, err
		}
		removing[key] = true
	}
	for _, p := range t.Pods {
		if err := validatePod(p); err != nil {
			return nil, err
		}
		if removing[p.Key] {
			return nil, fmt.Errorf("pod %s (%s) both wanted and removed", podRef(p), p.Key)
		}
		for _, f := range ruleset.Families() {
			lay, err := layoutOf(p, f)
			if err != nil {
				return nil, err
			}
			layouts[f] = append(layouts[f], lay)
		}
	}
	policy := map[ruleset.Family]map[string]*ruleset.Chain{}
	if t.Policy != nil {
		for i := range t.Policy.Chains {
			c := &t.Policy.Chains[i]
			if policy[c.Family] == nil {
				if c.Family != ruleset.IPv4 && c.Family != ruleset.IPv6 {
					return nil, fmt.Errorf("chain %s: unknown family %q", c.Name, c.Family)
				}
				policy[c.Family] = map[string]*ruleset.Chain{}
			}
			if _, ok := policyChainKey(c.Name); !ok {
				return nil, fmt.Errorf("chain %s is not a pod policy chain", c.Name)
			}
			policy[c.Family][c.Name] = c
		}
	}

	p := &applyPlan{scripts: map[ruleset.Family]*script{}, next: &kernelState{readAt: st.readAt, tables: map[ruleset.Family]*tableState{}}}
	fresh := map[ruleset.Family]bool{}
	for _, f := range ruleset.Families() {
		cur := st.tables[f]
		if cur == nil {
			cur = newTableState()
		}
		ts := cur.clone()
		s := &script{}
		fp := familyPlan{ts: ts, s: s, stats: &p.stats, policy: policy[f], f: f}
		fp.remove(t.Remove)
		if fp.base(len(t.Pods) > 0) {
			fresh[f] = true
			p.sweep = true
		}
		fp.bridges(t.Pods)
		for i, pod := range t.Pods {
			fp.pod(pod, layouts[f][i])
		}
		if t.Policy != nil {
			fp.policyChains(t.Policy.Chains)
		}
		p.scripts[f] = s
		p.next.tables[f] = ts
	}

	p.next.sets = st.sets
	if t.Policy != nil {
		if err := p.planSets(t.Policy.Sets, st.sets, log); err != nil {
			return nil, err
		}
	}
	p.stats.PodsRemoved = len(t.Remove)
	p.startEpoch(fresh)
	return p, nil
}

// startEpoch makes a change that may deny what the kernel admits now
// start a new policy epoch in each family whose base chains stay, in the
// same transaction as the change: every connection is then judged again,
// by its next packet, against what the kernel holds then. Families whose
// epoch rules this plan writes anew have a new epoch already.
//
// A change that only adds (a new pod's chains and dispatch, members that
// sets gain, rules inserted ahead of a fresh chain's default deny) denies
// nothing that was admitted, and keeps a new pod's write add-only: a
// deletion in the transaction would cost the ADD path an RCU grace
// period. A connection to a new pod's address admitted before the pod had
// it went through a removal or a narrowing since, which started an epoch.
func (p *applyPlan) startEpoch(fresh map[ruleset.Family]bool) {
	for _, f := range ruleset.Families() {
		ts := p.next.tables[f]
		if fresh[f] || ts.epoch == 0 || !p.narrows(f) {
			continue
		}
		old, next := ts.epoch, nextEpoch(ts.epoch)
		oldRules, nextRules := epochRules(old), epochRules(next)
		s := p.scripts[f]
		for _, chain := range epochChains {
			// Deleting the old rule by its spelling fails the whole
			// transaction when the kernel names another epoch: a writer
			// planning from a stale memory would otherwise reuse one.
			s.delete(chain, quoteArgs(oldRules[chain]))
			s.rule("-I", chain+" "+strconv.Itoa(epochRulePosition(chain)), nextRules[chain])
		}
		ts.epoch, ts.epochSeen = next, next
		if next < old {
			p.sweep = true
		}
	}
}

// narrows reports a plan that may deny, in family f, what the kernel
// admits now: it deletes, flushes or removes something of f's table, or
// an existing set of f loses addresses. Conntrack entries are of one
// family, so the other family's epoch may stay.
func (p *applyPlan) narrows(f ruleset.Family) bool {
	if s := p.scripts[f]; s != nil && (len(s.deletes) > 0 || len(s.decls) > 0 || len(s.removes) > 0) {
		return true
	}
	return p.setsNarrowed[f]
}

// empty reports a plan that writes nothing.
func (p *applyPlan) empty() bool {
	for _, s := range p.scripts {
		if !s.empty() {
			return false
		}
	}
	return len(p.setsBefore) == 0 && len(p.setsAfter) == 0 && len(p.destroy) == 0
}

// familyPlan plans one family's script on ts, which it brings to the state
// the script leaves.
type familyPlan struct {
	f      ruleset.Family
	ts     *tableState
	s      *script
	stats  *ApplyStats
	policy map[string]*ruleset.Chain
	// created are the chains this plan creates; they are written whole.
	created map[string]bool
}

func (fp *familyPlan) remove(keys []string) {
	for _, key := range keys {
		for _, chain := range sharedChains {
			for _, r := range fp.ts.dispatch[chain][key] {
				fp.s.delete(chain, r)
			}
			delete(fp.ts.dispatch[chain], key)
		}
		delete(fp.ts.pods, key)
		for _, name := range podChainNames(key) {
			if _, ok := fp.ts.chains[name]; ok {
				fp.s.declare(name)
				fp.s.remove(name)
				delete(fp.ts.chains, name)
			}
		}
	}
}

// base keeps the base chains and jumps while pods have chains, and removes
// them with the last one, so that a node without pods holds nothing of
// podwall. It reports whether it writes the epoch rules anew: then under
// an epoch above any the kernel named, since a connection may carry it.
func (fp *familyPlan) base(addingPods bool) (newEpoch bool) {
	ts := fp.ts
	if addingPods || ts.hasPodChains() {
		for _, c := range baseChains(fp.f, 0) {
			if _, exists := ts.chains[c.name]; rewrittenWhole(c.name) && (!exists || !ts.baseCurrent[c.name]) {
				newEpoch = true
			}
		}
		epoch := ts.epoch
		if newEpoch {
			epoch = nextEpoch(ts.epochSeen)
			ts.epoch, ts.epochSeen = epoch, epoch
		}
		for _, c := range baseChains(fp.f, epoch) {
			_, exists := ts.chains[c.name]
			if exists && !(newEpoch && rewrittenWhole(c.name)) {
				continue
			}
			// Chains holding dispatch rules are declared only when they
			// do not exist: declaring flushes.
			fp.s.declare(c.name)
			for _, r := range c.rules {
				fp.s.rule("-A", c.name, r)
			}
			ts.chains[c.name] = chainState{n: len(c.rules)}
			if rewrittenWhole(c.name) {
				ts.baseCurrent[c.name] = true
			}
		}
		for _, j := range baseJumps {
			if len(ts.jumps[j.builtin]) == 0 {
				fp.s.rule("-I", j.builtin+" 1", j.args)
				ts.jumps[j.builtin] = []string{quoteArgs(j.args)}
			}
		}
		return newEpoch
	}
	for _, j := range baseJumps {
		for _, r := range ts.jumps[j.builtin] {
			fp.s.delete(j.builtin, r)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(ts.chains)) {
		fp.s.declare(name)
		fp.s.remove(name)
	}
	*ts = *newTableState()
	return false
}

// bridges covers the bridges of the pods wanted and of the pods the table
// holds.
func (fp *familyPlan) bridges(pods []Pod) {
	want := map[string]bool{}
	for _, p := range pods {
		if coveredByBridge(p) {
			want[p.Bridge] = true
		}
	}
	for _, p := range fp.ts.pods {
		if coveredByBridge(p) {
			want[p.Bridge] = true
		}
	}
	for _, br := range slices.Sorted(maps.Keys(want)) {
		if fp.ts.bridges[br] {
			continue
		}
		antispoof, misaddressed := bridgeCoverage(br)
		fp.s.rule("-A", chainAntispoof, antispoof)
		fp.s.rule("-A", chainMisaddressed, misaddressed)
		fp.ts.bridges[br] = true
	}
}

// pod writes what differs of the pod's fixed chains and dispatch, and
// creates its policy chains when they do not exist: with the policy when
// it is known, else with a default deny.
func (fp *familyPlan) pod(p Pod, lay podLayout) {
	ts := fp.ts
	written := false
	for _, c := range []ruleset.Chain{lay.from, lay.to} {
		cs, exists := ts.chains[c.Name]
		if exists {
			if next, ok := cs.upToDate(c); ok {
				ts.chains[c.Name] = next
				continue
			}
		}
		ts.chains[c.Name] = fp.writeWhole(c, !exists)
		written = true
	}
	in, out := policyChains(p.Key)
	for _, name := range []string{in, out} {
		if _, exists := ts.chains[name]; exists {
			continue
		}
		if c := fp.policy[name]; c != nil {
			ts.chains[name] = fp.writeWhole(*c, true)
			fp.stats.ChainsWritten++
		} else {
			fp.s.create(name)
			fp.s.rule("-A", name, defaultDenyRule(p))
			ts.chains[name] = chainState{n: 1, denyTail: true}
		}
		fp.markCreated(name)
		written = true
	}
	exact := `--comment "` + podComment(p) + `"`
	for _, chain := range sharedChains {
		want := lay.dispatch[chain]
		have := ts.dispatch[chain][p.Key]
		if len(have) == len(want) && !slices.ContainsFunc(have, func(r string) bool { return !strings.Contains(r, exact) }) {
			continue
		}
		for _, r := range have {
			fp.s.delete(chain, r)
		}
		spelt := make([]string, len(want))
		for i, r := range want {
			fp.s.rule("-A", chain, r)
			spelt[i] = quoteArgs(r)
		}
		byKey := ts.dispatch[chain]
		if byKey == nil {
			byKey = map[string][]string{}
			ts.dispatch[chain] = byKey
		}
		if len(spelt) == 0 {
			delete(byKey, p.Key)
		} else {
			byKey[p.Key] = spelt
		}
		written = true
	}
	ts.pods[p.Key] = p
	if written {
		fp.stats.PodsWritten++
	}
}

func (fp *familyPlan) markCreated(name string) {
	if fp.created == nil {
		fp.created = map[string]bool{}
	}
	fp.created[name] = true
}

// writeWhole writes c's rules and fingerprint into a chain that is
// created (fresh) or flushed and refilled in the same transaction.
func (fp *familyPlan) writeWhole(c ruleset.Chain, fresh bool) chainState {
	if fresh {
		fp.s.create(c.Name)
	} else {
		fp.s.declare(c.Name)
	}
	for _, r := range c.Rules {
		fp.s.rule("-A", c.Name, r)
	}
	f := fingerprint(c)
	fp.s.rule("-A", c.Name, ruleset.Rule{"-m", "comment", "--comment", f})
	return chainState{n: len(c.Rules) + 1, fp: f, sets: setsOf(c.Rules), rules: c.Rules}
}

// policyChains converges the policy chains of the pods the table holds;
// chains of pods not here are skipped (deleted meanwhile, or not attached
// here yet).
func (fp *familyPlan) policyChains(chains []ruleset.Chain) {
	for _, c := range chains {
		if c.Family != fp.f || fp.created[c.Name] {
			continue
		}
		key, _ := policyChainKey(c.Name)
		if _, ok := fp.ts.chains[fromPodChain(key)]; !ok {
			continue
		}
		current, exists := fp.ts.chains[c.Name]
		if exists {
			if next, ok := current.upToDate(c); ok {
				fp.ts.chains[c.Name] = next
				continue
			}
		}
		fp.ts.chains[c.Name] = writeChain(fp.s, c, fingerprint(c), exists && current.onlyDefaultDeny())
		fp.stats.ChainsWritten++
	}
}

// planSets orders the set changes around the rule changes and works out
// the sets the kernel holds afterwards.
func (p *applyPlan) planSets(desired []ruleset.IPSet, kernel map[string]*kernelSet, log *slog.Logger) error {
	sp, err := planSets(desired, kernel)
	if err != nil {
		return err
	}
	// Sets still referenced by a chain must survive, whatever the policy
	// says: the kernel would refuse, and the chain would lose its match.
	inUse := map[string]bool{}
	for _, ts := range p.next.tables {
		for _, cs := range ts.chains {
			for _, set := range cs.sets {
				inUse[set] = true
			}
		}
	}
	for _, name := range sp.destroy {
		if inUse[name] {
			if log != nil {
				log.Warn("ipset no longer desired but still referenced; kept", "set", name)
			}
			continue
		}
		p.destroy = append(p.destroy, "destroy "+name)
	}
	slices.Sort(p.destroy)
	p.setsBefore, p.setsAfter = sp.script, sp.grow
	p.setsNarrowed = map[ruleset.Family]bool{}
	for f, n := range sp.narrowed {
		p.setsNarrowed[f] = n > 0
	}
	p.stats.SetsCreated, p.stats.EntriesAdded, p.stats.EntriesDeleted = sp.created, sp.added, sp.dropd
	p.stats.SetsDestroyed = len(p.destroy)

	next := maps.Clone(kernel)
	if next == nil {
		next = map[string]*kernelSet{}
	}
	changed := make(map[string]bool, len(sp.changed))
	for _, name := range sp.changed {
		changed[name] = true
	}
	for _, ds := range desired {
		if !changed[ds.Name] {
			continue // the kernel's set, as known, is the desired one
		}
		ks := &kernelSet{typ: string(ds.Type), family: string(ds.Family), members: make(map[string]string, len(ds.Members))}
		for _, m := range ds.Members {
			ks.members[memberKey(m)] = m
		}
		next[ds.Name] = ks
	}
	for _, line := range p.destroy {
		delete(next, strings.TrimPrefix(line, "destroy "))
	}
	p.next.sets = next
	return nil
}
