package dataplane

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// DefaultMaxStateAge bounds how long Apply trusts its memory of the kernel
// without reading the tables back, so that a chain or set changed by hand
// (which the journal cannot know of) is repaired at the latest by the
// first Apply after that long.
const DefaultMaxStateAge = 30 * time.Second

// kernelState is what Apply knows of podwall's chains and sets in the
// kernel: read back whole, then kept up to date from what Apply writes and
// what the journal says plugin invocations did.
type kernelState struct {
	epoch  string // of the journal, when this was last current
	seq    uint64 // the journal's last entry accounted for
	readAt time.Time
	chains map[ruleset.Family]map[string]chainState // our chains only
	sets   map[string]*kernelSet
}

// chainState is what Apply needs of a chain: whether it exists, its
// length, the rule that carries its fingerprint and the sets its rules use.
// A policy chain Apply wrote is its rules then the fingerprint; one it
// wrote into the plugin's fresh chain (see Apply) keeps the plugin's
// default deny after them, which is never reached.
type chainState struct {
	n int
	// fp is the rule that carries the fingerprint when the chain is up to
	// date: the last, or the one before a trailing default deny.
	fp string
	// denyTail: the last rule is the plugin's default deny.
	denyTail bool
	sets     []string
	// rules, when known, are the rules the fingerprint was last found or
	// written for. Comparing them costs less than hashing them again:
	// unchanged rules of successive compilations share their strings.
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

// onlyDefaultDeny reports a policy chain as the plugin creates it: its
// default deny alone.
func (c chainState) onlyDefaultDeny() bool { return c.n == 1 && c.denyTail }

// defaultDenyPrefix and defaultDenySuffix frame the plugin's default deny
// rule (defaultDenyRule) as iptables-save prints it.
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
	st := &kernelState{readAt: time.Now(), chains: map[ruleset.Family]map[string]chainState{}}
	// The three reads are independent: side by side.
	waitTables := d.startSaves(ctx)
	sets, setsErr := readSets(ctx)
	tables, tablesErr := waitTables()
	if err := errors.Join(tablesErr, setsErr); err != nil {
		return nil, err
	}
	for f, t := range tables {
		st.chains[f] = chainStates(t)
	}
	st.sets = sets
	return st, nil
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

// replay brings the state up to date with journal entries of plugin
// invocations. Each change must appear as its begin entry directly
// followed by its done entry (writers hold the lock from one to the
// other); false when anything cannot be accounted for, such as a change
// begun by a writer that died before it was done.
func (st *kernelState) replay(entries []journalEntry) bool {
	if len(entries)%2 != 0 {
		return false
	}
	for i := 0; i < len(entries); i += 2 {
		b, e := entries[i], entries[i+1]
		if b.done || !e.done || b.op != e.op || b.key != e.key {
			return false
		}
		if e.op == opProbe {
			continue // the throwaway chain and set are gone again
		}
		if ruleset.ValidateChainKey(e.key) != nil {
			return false
		}
		in, out := policyChains(e.key)
		switch e.op {
		case opEnsure:
			for _, f := range ruleset.Families() {
				c := st.chains[f]
				c[fromPodChain(e.key)] = chainState{}
				c[toPodChain(e.key)] = chainState{}
				for _, name := range []string{in, out} {
					if _, ok := c[name]; !ok {
						c[name] = chainState{n: 1, denyTail: true} // the plugin's default deny
					}
				}
			}
		case opRemove:
			for _, f := range ruleset.Families() {
				for _, name := range []string{fromPodChain(e.key), toPodChain(e.key), in, out} {
					delete(st.chains[f], name)
				}
			}
		default:
			return false
		}
	}
	return true
}
