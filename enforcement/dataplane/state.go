package dataplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// DefaultMaxStateAge bounds how long Apply trusts its memory of the kernel
// without reading the tables back, so that a chain or set changed by
// someone else is repaired at the latest by the first Apply after that
// long. Any failed write also makes the next Apply read everything.
const DefaultMaxStateAge = 30 * time.Second

// kernelState is what the dataplane knows of podwall's chains and sets in
// the kernel: read back whole, then kept up to date from what Apply
// writes.
type kernelState struct {
	readAt time.Time
	tables map[ruleset.Family]*tableState
	sets   map[string]*kernelSet
}

// tableState is one family's filter table, as far as podwall owns it.
type tableState struct {
	chains map[string]chainState // our chains only
	// dispatch holds each pod's rules in the shared chains, by chain and
	// key, spelt so that "-D <chain> <rule>" deletes them.
	dispatch map[string]map[string][]string
	// pods are the identities the dispatch comments carry, by key.
	pods map[string]Pod
	// bridges whose ports are covered (bridgeCoverage), in both
	// PODWALL-ANTISPOOF and PODWALL-MISADDRESSED.
	bridges map[string]bool
	// jumps holds the jump rules from the built-in chains into ours, as
	// saved, by built-in chain.
	jumps map[string][]string
	// baseCurrent: the chains rewritten whole (rewrittenWhole) hold this
	// layout's rules.
	baseCurrent map[string]bool
	// epoch is the policy epoch that the epoch rules name, 0 unless they
	// all exist and name the same one; epochSeen is the highest any of
	// them names.
	epoch, epochSeen uint32
}

func newTableState() *tableState {
	return &tableState{chains: map[string]chainState{}, dispatch: map[string]map[string][]string{},
		pods: map[string]Pod{}, bridges: map[string]bool{}, jumps: map[string][]string{}, baseCurrent: map[string]bool{}}
}

// podKeys lists the keys that have a "from pod" chain: the pods of this
// family's table.
func (ts *tableState) podKeys() []string {
	var out []string
	for name := range ts.chains {
		if key, ok := strings.CutPrefix(name, chainPrefix+"F-"); ok {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out
}

// hasPods reports whether any chain of a pod (not a base chain) exists.
func (ts *tableState) hasPodChains() bool {
	for name := range ts.chains {
		if !isBaseChain(name) {
			return true
		}
	}
	return false
}

// chainState is what Apply needs of a chain: whether it exists, its
// length, the rule that carries its fingerprint and the sets its rules use.
// A chain Apply wrote is its rules then the fingerprint; a policy chain
// written into the plugin's fresh chain (see writeChain) keeps the
// plugin's default deny after them, which is never reached.
type chainState struct {
	n int
	// fp is the rule that carries the fingerprint when the chain is up to
	// date: the last, or the one before a trailing default deny.
	fp string
	// denyTail: the last rule is the plugin's default deny.
	denyTail bool
	sets     []string
	// rules, when known, are the rules the fingerprint was last found or
	// written for. Comparing them costs less than hashing them again.
	rules []ruleset.Rule
}

// holds reports whether the chain is known to hold exactly rules.
func (c chainState) holds(rules []ruleset.Rule) bool {
	return c.rules != nil && slices.EqualFunc(c.rules, rules, slices.Equal)
}

func (c chainState) hasFingerprint(fp string, rules int) bool {
	want := rules + 1
	if c.denyTail {
		want++
	}
	return c.n == want && strings.Contains(c.fp, fp)
}

// upToDate reports whether the chain holds c's rules, by content when
// they are remembered, else by fingerprint; it returns the state to
// remember.
func (c chainState) upToDate(want ruleset.Chain) (chainState, bool) {
	if c.holds(want.Rules) {
		return c, true
	}
	if c.hasFingerprint(fingerprint(want), len(want.Rules)) {
		c.rules = want.Rules
		return c, true
	}
	return c, false
}

// onlyDefaultDeny reports a policy chain as a pod's creation leaves it
// without policy: its default deny alone.
func (c chainState) onlyDefaultDeny() bool { return c.n == 1 && c.denyTail }

// defaultDenyPrefix and defaultDenySuffix frame the default deny rule
// (defaultDenyRule) as iptables-save prints it.
const (
	defaultDenyPrefix = `-m comment --comment "podwall: default deny `
	defaultDenySuffix = `" -j DROP`
)

func isDefaultDeny(saved string) bool {
	ref, ok := strings.CutPrefix(saved, defaultDenyPrefix)
	if !ok {
		return false
	}
	ref, ok = strings.CutSuffix(ref, defaultDenySuffix)
	return ok && !strings.Contains(ref, `"`)
}

// readState reads podwall's chains and sets back from the kernel.
func (d *Dataplane) readState(ctx context.Context) (*kernelState, error) {
	// The three reads are independent: side by side.
	waitTables := d.startSaves(ctx)
	setsOut, setsErr := d.run(ctx, nil, "ipset", "save")
	tables, tablesErr := waitTables()
	if err := errors.Join(tablesErr, setsErr); err != nil {
		return nil, err
	}
	return stateOf(tables, parseSets(setsOut)), nil
}

// stateOf builds the state from what iptables-save and ipset save print.
func stateOf(tables map[ruleset.Family]*table, sets map[string]*kernelSet) *kernelState {
	st := &kernelState{readAt: time.Now(), tables: map[ruleset.Family]*tableState{}, sets: sets}
	for _, f := range ruleset.Families() {
		t := tables[f]
		if t == nil {
			t = &table{chains: map[string]*savedChain{}}
		}
		st.tables[f] = tableStateOf(t, f)
	}
	return st
}

func tableStateOf(t *table, f ruleset.Family) *tableState {
	ts := newTableState()
	ts.chains = chainStates(t)
	for _, chain := range sharedChains {
		for _, r := range t.rules(chain) {
			if p, ok := parsePodComment(r); ok {
				byKey := ts.dispatch[chain]
				if byKey == nil {
					byKey = map[string][]string{}
					ts.dispatch[chain] = byKey
				}
				byKey[p.Key] = append(byKey[p.Key], r)
				if _, seen := ts.pods[p.Key]; !seen {
					ts.pods[p.Key] = p
				}
			}
		}
	}
	covered := map[string]int{}
	for _, chain := range []string{chainAntispoof, chainMisaddressed} {
		for _, r := range t.rules(chain) {
			if br, ok := parseBridgeComment(r); ok {
				covered[br]++
			}
		}
	}
	for br, n := range covered {
		ts.bridges[br] = n >= 2
	}
	for _, j := range baseJumps {
		for _, r := range t.rules(j.builtin) {
			if isJumpTo(j.args[len(j.args)-1])(r) {
				ts.jumps[j.builtin] = append(ts.jumps[j.builtin], r)
			}
		}
	}
	ts.epoch, ts.epochSeen = epochOf(t)
	for _, c := range baseChains(f, ts.epoch) {
		if rewrittenWhole(c.name) && t.has(c.name) {
			ts.baseCurrent[c.name] = ts.epoch != 0 && sameRules(t.rules(c.name), c.rules)
		}
	}
	return ts
}

var epochMarkRE = regexp.MustCompile(`--(?:mark|set-xmark) (0x[0-9a-f]+)/` + fmt.Sprintf("0x%x", epochMask) + `\b`)

// epochOf reads the epoch that the epoch rules name, 0 unless each chain
// has exactly one and they agree, and the highest epoch any rule names.
func epochOf(t *table) (current, seen uint32) {
	consistent := true
	for _, chain := range epochChains {
		found := 0
		for _, r := range t.rules(chain) {
			m := epochMarkRE.FindStringSubmatch(r)
			if m == nil {
				continue
			}
			v, err := strconv.ParseUint(m[1], 0, 32)
			if err != nil || uint32(v)&^epochMask != 0 {
				consistent = false
				continue
			}
			e := uint32(v) >> epochShift
			seen = max(seen, e)
			if found++; current == 0 {
				current = e
			} else if e != current {
				consistent = false
			}
		}
		if found != 1 {
			consistent = false
		}
	}
	if !consistent {
		return 0, seen
	}
	return current, seen
}

func chainStates(t *table) map[string]chainState {
	out := map[string]chainState{}
	for _, name := range t.ourChains() {
		rules := t.rules(name)
		cs := chainState{n: len(rules)}
		body := rules
		if len(rules) > 0 && isDefaultDeny(rules[len(rules)-1]) {
			cs.denyTail = true
			body = rules[:len(rules)-1]
		}
		if len(body) > 0 {
			cs.fp = body[len(body)-1]
		}
		for _, r := range rules {
			for _, m := range matchSetRE.FindAllStringSubmatch(r, -1) {
				cs.sets = append(cs.sets, m[1])
			}
		}
		out[name] = cs
	}
	return out
}

// sameRules compares saved rules with wanted ones by count and by the
// jump targets and comments, which is what tells the layouts apart
// (iptables-save respells matches).
func sameRules(saved []string, want []ruleset.Rule) bool {
	if len(saved) != len(want) {
		return false
	}
	for i, w := range want {
		for j, a := range w {
			if (a == "-j" || a == "--comment") && j+1 < len(w) && !strings.Contains(saved[i], w[j+1]) {
				return false
			}
		}
	}
	return true
}

func isJumpTo(chain string) func(string) bool {
	return func(rule string) bool { return strings.HasSuffix(rule, "-j "+chain) }
}

func isBaseChain(name string) bool {
	switch name {
	case chainForward, chainInput, chainJudged, chainAdmit, chainEgress, chainIngress, chainAntispoof, chainMisaddressed:
		return true
	}
	return false
}

// clone copies the table state deeply enough that planning on the copy
// never changes the original.
func (ts *tableState) clone() *tableState {
	c := &tableState{chains: maps.Clone(ts.chains), dispatch: map[string]map[string][]string{}, pods: maps.Clone(ts.pods),
		bridges: maps.Clone(ts.bridges), jumps: maps.Clone(ts.jumps), baseCurrent: maps.Clone(ts.baseCurrent),
		epoch: ts.epoch, epochSeen: ts.epochSeen}
	for chain, byKey := range ts.dispatch {
		c.dispatch[chain] = maps.Clone(byKey)
	}
	return c
}
