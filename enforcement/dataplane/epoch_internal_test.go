package dataplane

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// kernelEpoch is the epoch the fake kernel's rules of family f name.
func kernelEpoch(t *testing.T, k *fakeKernel, f ruleset.Family) uint32 {
	t.Helper()
	tbl := parseSave(string(k.tables[f].save()))
	epoch, _ := epochOf(tbl)
	return epoch
}

// The first pod creates the epoch rules, swept around; a change that only
// adds keeps the epoch; a change that may deny (a rule rewritten, a set
// member gone, a pod removed) starts the next epoch in the same restore.
func TestEpochStartsWithEveryNarrowingChange(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a, b := fakePod("a", keyA, "veth-a", "10.0.0.2"), fakePod("b", keyB, "veth-b", "10.0.0.3")

	mark := k.mark()
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.9"}, a)})
	if got, want := kinds(k.writes(mark)), []string{"conntrack", "conntrack", "ipset", "iptables-nft-restore", "ip6tables-nft-restore", "conntrack", "conntrack"}; !slices.Equal(got, want) {
		t.Errorf("first pod: writes %v, want %v", got, want)
	}
	for _, f := range ruleset.Families() {
		if e := kernelEpoch(t, k, f); e != 1 {
			t.Errorf("%s: epoch %d after the first pod, want 1", f, e)
		}
	}

	// The set is IPv4's: narrowing it starts an epoch in IPv4 only, whose
	// connections are the only ones it may deny.
	steps := []struct {
		name         string
		target       Target
		want4, want6 uint32
	}{
		{"a pod added", Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)}, 1, 1},
		{"a member added", Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9", "10.0.0.8"}, a, b)}, 1, 1},
		{"nothing changed", Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9", "10.0.0.8"}, a, b)}, 1, 1},
		{"a member gone", Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.8"}, a, b)}, 2, 1},
		{"a pod removed", Target{Pods: []Pod{a}, Remove: []string{keyB}, Policy: desiredFor([]string{"10.0.0.8"}, a)}, 3, 2},
	}
	for _, s := range steps {
		mark := k.mark()
		mustApply(t, d, s.target)
		for f, want := range map[ruleset.Family]uint32{ruleset.IPv4: s.want4, ruleset.IPv6: s.want6} {
			if e := kernelEpoch(t, k, f); e != want {
				t.Errorf("%s: %s epoch %d, want %d", s.name, f, e, want)
			}
		}
		for _, w := range k.writes(mark) {
			if w.name == "conntrack" {
				t.Errorf("%s: conntrack swept, only new epoch rules and wraps need it", s.name)
			}
			if s.want4 == 1 && strings.Contains(w.stdin, "-D ") {
				t.Errorf("%s: %s deletes:\n%s", s.name, w.name, w.stdin)
			}
		}
	}

	// Policy rewritten: the chain's new rules and the next epoch commit
	// together.
	changed := desiredFor([]string{"10.0.0.8"}, a)
	for i := range changed.Chains {
		changed.Chains[i].Rules = append([]ruleset.Rule{{"-p", "tcp", "--dport", "80", "-j", "RETURN"}}, changed.Chains[i].Rules...)
	}
	mark = k.mark()
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: changed})
	for _, w := range k.writes(mark) {
		if w.name == "iptables-nft-restore" && (!strings.Contains(w.stdin, "--dport 80") || !strings.Contains(w.stdin, epochMark(4))) {
			t.Errorf("rewrite and epoch 4 not in one restore:\n%s", w.stdin)
		}
	}
}

// When the epoch wraps, no connection may still carry the epoch that
// starts again: the epochs are cleared before the rules change, and those
// judged meanwhile after.
func TestEpochWrapSweepsAround(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.9"}, a)})
	for _, f := range ruleset.Families() {
		tbl := k.tables[f]
		for chain, r := range epochRules(1) {
			i := slices.Index(tbl.chains[chain], quoteArgs(r))
			if i < 0 {
				t.Fatalf("%s: no epoch rule in %s: %v", f, chain, tbl.chains[chain])
			}
			tbl.chains[chain][i] = quoteArgs(epochRules(maxEpoch)[chain])
		}
	}
	fresh := newFakeDataplane(k, t.TempDir())
	mark := k.mark()
	mustApply(t, fresh, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.8"}, a)})
	var got []string
	for _, w := range k.writes(mark) {
		got = append(got, w.name+" "+strings.Join(w.args, " "))
	}
	restores := slices.IndexFunc(got, func(c string) bool { return strings.HasPrefix(c, "iptables-nft-restore") })
	if restores < 2 || restores+4 > len(got) ||
		!slices.Equal(got[:2], []string{"conntrack IPv4 keep 0", "conntrack IPv6 keep 0"}) ||
		!slices.Equal(got[restores+1:restores+3], []string{"conntrack IPv4 keep 1", "conntrack IPv6 keep " + strconv.Itoa(int(maxEpoch))}) {
		t.Errorf("wrap: writes %q, want sweeps keeping nothing first and each family's epoch right after the restore", got)
	}
	// Only IPv4's set narrowed: IPv6 keeps its epoch, and writes nothing.
	for f, want := range map[ruleset.Family]uint32{ruleset.IPv4: 1, ruleset.IPv6: maxEpoch} {
		if e := kernelEpoch(t, k, f); e != want {
			t.Errorf("%s: epoch %d after the wrap, want %d", f, e, want)
		}
	}
}

// Another writer started an epoch meanwhile: a write planned from memory
// would name an epoch that connections may carry already, so it fails as
// a whole and is planned again from the kernel.
func TestEpochFromStaleMemoryIsNotReused(t *testing.T) {
	k := newFakeKernel()
	agent := newFakeDataplane(k, t.TempDir())
	a, b := fakePod("a", keyA, "veth-a", "10.0.0.2"), fakePod("b", keyB, "veth-b", "10.0.0.3")
	mustApply(t, agent, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)})
	other := newFakeDataplane(k, t.TempDir())
	mustApply(t, other, Target{Pods: []Pod{a, b}, Policy: desiredFor(nil, a, b)})
	if e := kernelEpoch(t, k, ruleset.IPv4); e != 2 {
		t.Fatalf("other writer: epoch %d, want 2", e)
	}
	mustApply(t, agent, Target{Pods: []Pod{a}, Remove: []string{keyB}, Policy: desiredFor(nil, a)})
	if e := kernelEpoch(t, k, ruleset.IPv4); e != 3 {
		t.Errorf("agent after the other writer: epoch %d, want 3", e)
	}
}
