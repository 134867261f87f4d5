package dataplane

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// These tests run Apply against the fake kernel: they pin the ordering
// guarantees, which need no root. What the real kernel does with the
// rules is tested in the netns tests.

const (
	keyA = "AAAAAAAAAAAAAAAA"
	keyB = "BBBBBBBBBBBBBBBB"
	keyC = "CCCCCCCCCCCCCCCC"
)

func fakePod(name, key, dev, ip string) Pod {
	return Pod{Key: key, Network: "podnet", ContainerID: "cid-" + name, IfName: "eth0", Namespace: "x", Name: name,
		IPs: []netip.Addr{netip.MustParseAddr(ip)}, HostIface: dev, Layout: LayoutBridge, Bridge: "br0"}
}

// desiredFor gives each pod an ingress chain that allows the members of
// one set, and an egress chain that denies.
func desiredFor(members []string, pods ...Pod) *ruleset.Desired {
	d := &ruleset.Desired{Sets: []ruleset.IPSet{{Name: "PODWALL-PODS4-PEERS", Family: ruleset.IPv4, Type: ruleset.SetHashIP, Members: members}}}
	for _, p := range pods {
		in, out := policyChains(p.Key)
		for _, f := range ruleset.Families() {
			deny := ruleset.Rule{"-m", "comment", "--comment", "x/" + p.Name + ": default deny", "-j", "DROP"}
			inRules := []ruleset.Rule{deny}
			if f == ruleset.IPv4 {
				inRules = []ruleset.Rule{{"-m", "set", "--match-set", "PODWALL-PODS4-PEERS", "src", "-j", "RETURN"}, deny}
			}
			d.Chains = append(d.Chains,
				ruleset.Chain{Family: f, Name: in, Direction: ruleset.Ingress, Rules: inRules},
				ruleset.Chain{Family: f, Name: out, Direction: ruleset.Egress, Rules: []ruleset.Rule{deny}})
		}
	}
	return d
}

func mustApply(t *testing.T, d *Dataplane, target Target) ApplyStats {
	t.Helper()
	st, err := d.Apply(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// kinds names each write: "ipset" or the family's restore.
func kinds(calls []fakeCall) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.name
	}
	return out
}

// A pod's ADD is one Apply: the sets first (the fake kernel refuses a
// rule on a missing set), then the base chains, the bridge's coverage,
// the pod's chains, dispatch and policy in one restore per family, which
// only adds.
func TestApplyWritesANewPodInOneAddOnlyRestorePerFamily(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.9"}, a)})
	fv4 := k.tables[ruleset.IPv4].chains
	if !slices.Contains(fv4[chainAntispoof], quoteArgs(first(bridgeCoverage("br0")))) {
		t.Errorf("bridge not covered: %v", fv4[chainAntispoof])
	}
	for _, r := range fv4[chainAntispoof] {
		if strings.Contains(r, "key="+keyA) {
			t.Errorf("a bridged pod has a drop of its own in ANTISPOOF: %s", r)
		}
	}

	b := fakePod("b", keyB, "veth-b", "10.0.0.3")
	mark := k.mark()
	st := mustApply(t, d, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)})
	if st.PodsWritten != 2 || st.ChainsWritten != 4 {
		t.Errorf("b attached: %+v", st)
	}
	writes := k.writes(mark)
	if got := kinds(writes); !slices.Equal(got, []string{"iptables-nft-restore", "ip6tables-nft-restore"}) {
		t.Fatalf("writes %v, want one restore per family", got)
	}
	for _, w := range writes {
		for _, line := range strings.Split(w.stdin, "\n") {
			if strings.HasPrefix(line, "-D ") || strings.HasPrefix(line, ":") || strings.HasPrefix(line, "-X ") {
				t.Errorf("%s: a new pod's restore deletes or flushes: %s", w.name, line)
			}
		}
	}

	// Nothing changed: nothing written, from memory or read back.
	mark = k.mark()
	if st := mustApply(t, d, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)}); !st.Unchanged {
		t.Errorf("again: %+v", st)
	}
	fresh := newFakeDataplane(k, t.TempDir())
	if st := mustApply(t, fresh, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)}); !st.Unchanged {
		t.Errorf("read back: %+v", st)
	}
	if w := k.writes(mark); len(w) != 0 {
		t.Errorf("unchanged state written: %v", kinds(w))
	}
}

func first(a, _ ruleset.Rule) ruleset.Rule { return a }

// A set that shrinks does so before the rules change, one that grows
// after; a set no rule uses any more is destroyed last.
func TestApplyShrinksSetsBeforeAndGrowsAfterTheRules(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.8", "10.0.0.9"}, a)})

	b := fakePod("b", keyB, "veth-b", "10.0.0.3")
	mark := k.mark()
	mustApply(t, d, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9", "10.0.0.10"}, a, b)})
	writes := k.writes(mark)
	if got := kinds(writes); !slices.Equal(got, []string{"ipset", "iptables-nft-restore", "ip6tables-nft-restore", "ipset"}) {
		t.Fatalf("writes %v", got)
	}
	if !strings.Contains(writes[0].stdin, "del PODWALL-PODS4-PEERS 10.0.0.8") || strings.Contains(writes[0].stdin, "add ") {
		t.Errorf("before the rules: %q, want the shrink only", writes[0].stdin)
	}
	if !strings.Contains(writes[3].stdin, "add PODWALL-PODS4-PEERS 10.0.0.10") || strings.Contains(writes[3].stdin, "del ") {
		t.Errorf("after the rules: %q, want the growth only", writes[3].stdin)
	}

	// No policy any more: the chains stop using the set, then it goes.
	mark = k.mark()
	noSets := desiredFor(nil, a, b)
	noSets.Sets = nil
	for i := range noSets.Chains {
		noSets.Chains[i].Rules = noSets.Chains[i].Rules[len(noSets.Chains[i].Rules)-1:]
	}
	mustApply(t, d, Target{Pods: []Pod{a, b}, Policy: noSets})
	writes = k.writes(mark)
	if last := writes[len(writes)-1]; last.name != "ipset" || !strings.HasPrefix(last.stdin, "destroy ") {
		t.Errorf("last write %s %q, want the set destroyed", last.name, last.stdin)
	}
	if len(k.sets) != 0 {
		t.Errorf("sets left: %v", k.sets)
	}
}

// A pod the plugin installed while the agent did not answer holds its
// default deny; the agent's Apply inserts the policy ahead of it instead
// of flushing the chain.
func TestApplyInsertsAheadOfTheFallbacksDefaultDeny(t *testing.T) {
	k := newFakeKernel()
	dir := t.TempDir()
	agent := newFakeDataplane(k, dir)
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	mustApply(t, agent, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.9"}, a)})

	c := fakePod("c", keyC, "veth-c", "10.0.0.4")
	if err := newFakeDataplane(k, dir).EnsurePod(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	in, _ := policyChains(keyC)
	if got := k.tables[ruleset.IPv4].chains[in]; len(got) != 1 || !isDefaultDeny(got[0]) {
		t.Fatalf("fallback's chain %v, want its default deny alone", got)
	}
	// The agent's memory does not know c: its write fails and it reads
	// back, then inserts.
	mark := k.mark()
	mustApply(t, agent, Target{Pods: []Pod{a, c}, Policy: desiredFor([]string{"10.0.0.9"}, a, c)})
	var last fakeCall
	for _, w := range k.writes(mark) {
		if w.name == "iptables-nft-restore" {
			last = w
		}
	}
	for _, line := range strings.Split(last.stdin, "\n") {
		if strings.Contains(line, in) && !strings.HasPrefix(line, "-I "+in+" ") {
			t.Errorf("c's ingress chain not only inserted into: %s", line)
		}
	}
	if got := k.tables[ruleset.IPv4].chains[in]; len(got) != 4 || !isDefaultDeny(got[3]) {
		t.Errorf("chain after the insert: %v", got)
	}
	if st := mustApply(t, newFakeDataplane(k, dir), Target{Pods: []Pod{a, c}, Policy: desiredFor([]string{"10.0.0.9"}, a, c)}); !st.Unchanged {
		t.Errorf("read back after the insert: %+v", st)
	}
}

// Removing the last pod removes everything of podwall, in an order the
// kernel accepts (references first, chains last).
func TestApplyRemovingTheLastPodLeavesNothing(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	b := fakePod("b", keyB, "veth-b", "10.0.0.3")
	b.Layout, b.Bridge = LayoutRouted, ""
	mustApply(t, d, Target{Pods: []Pod{a, b}, Policy: desiredFor([]string{"10.0.0.9"}, a, b)})
	if got := k.tables[ruleset.IPv4].chains[chainAntispoof]; !slices.ContainsFunc(got, func(r string) bool { return strings.Contains(r, "-i veth-b") }) {
		t.Errorf("routed pod without a drop of its own: %v", got)
	}
	st := mustApply(t, d, Target{Pods: []Pod{b}, Remove: []string{keyA}, Policy: desiredFor([]string{"10.0.0.9"}, b)})
	if st.PodsRemoved != 1 {
		t.Errorf("remove a: %+v", st)
	}
	for name := range k.tables[ruleset.IPv4].chains {
		if strings.Contains(name, keyA) {
			t.Errorf("chain of a left: %s", name)
		}
	}
	empty := &ruleset.Desired{}
	mustApply(t, d, Target{Remove: []string{keyB}, Policy: empty})
	for f, tbl := range k.tables {
		if len(tbl.order) != len(builtinChains) {
			t.Errorf("%s: chains left: %v", f, tbl.order)
		}
		for _, c := range builtinChains {
			if len(tbl.chains[c]) != 0 {
				t.Errorf("%s: %s keeps %v", f, c, tbl.chains[c])
			}
		}
	}
	if len(k.sets) != 0 {
		t.Errorf("sets left: %v", k.sets)
	}
}

// The plan is pure: planning twice from one state gives the same writes
// and leaves the state as it was.
func TestPlanLeavesTheStateAlone(t *testing.T) {
	k := newFakeKernel()
	d := newFakeDataplane(k, t.TempDir())
	a := fakePod("a", keyA, "veth-a", "10.0.0.2")
	mustApply(t, d, Target{Pods: []Pod{a}, Policy: desiredFor([]string{"10.0.0.9"}, a)})
	st := d.state
	before := len(st.tables[ruleset.IPv4].chains)
	b := fakePod("b", keyB, "veth-b", "10.0.0.3")
	target := Target{Pods: []Pod{a, b}, Remove: nil, Policy: desiredFor([]string{"10.0.0.10"}, a, b)}
	p1, err := planApply(st, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := planApply(st, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(p1.scripts[ruleset.IPv4].bytes()) != string(p2.scripts[ruleset.IPv4].bytes()) || !slices.Equal(p1.setsAfter, p2.setsAfter) {
		t.Error("two plans of the same state differ")
	}
	if len(st.tables[ruleset.IPv4].chains) != before || len(st.sets["PODWALL-PODS4-PEERS"].members) != 1 {
		t.Error("planning changed the state it planned from")
	}
	if _, err := planApply(st, Target{Pods: []Pod{a}, Remove: []string{keyA}}, nil); err == nil {
		t.Error("a pod both wanted and removed was planned")
	}
}
