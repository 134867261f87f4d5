package dataplane_test

import (
	"context"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

func TestEnsurePodIdempotent(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutBridge, "10.0.0.2", "fd00::2")
	b := testPod("x", "b", "BBBBBBBBBBBBBBBB", "vethb", dataplane.LayoutRouted, "10.0.0.3")
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		if err := d.EnsurePod(ctx, a); err != nil {
			return err
		}
		return d.EnsurePod(ctx, b)
	})
	first := n.save(t)
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		if err := d.EnsurePod(ctx, a); err != nil {
			return err
		}
		if err := d.EnsurePod(ctx, b); err != nil {
			return err
		}
		for _, p := range []dataplane.Pod{a, b} {
			if err := d.CheckPod(ctx, p); err != nil {
				return err
			}
		}
		pods, err := d.Pods(ctx)
		if err != nil {
			return err
		}
		if len(pods) != 2 || pods[0].Name != "a" || pods[1].HostIface != "vethb" || len(pods[0].IPs) != 2 || pods[1].Layout != dataplane.LayoutRouted {
			t.Errorf("Pods() = %+v", pods)
		}
		return nil
	})
	if second := n.save(t); second != first {
		t.Errorf("second EnsurePod changed the kernel:\nfirst:\n%s\nsecond:\n%s", first, second)
	}
	for _, want := range []string{
		`-A FORWARD -m comment --comment "podwall: pod traffic" -j PODWALL-FORWARD`,
		`-A PODWALL-F-AAAAAAAAAAAAAAAA -m physdev ! --physdev-in vetha -m comment --comment "podwall: anti-spoofing x/a: 10.0.0.2 only from vetha" -j DROP`,
		`-A PODWALL-EGRESS -s 10.0.0.2/32 -m comment --comment "podwall pod=x/a key=AAAAAAAAAAAAAAAA`,
		`-A PODWALL-ANTISPOOF -m physdev --physdev-in vetha -m comment --comment "podwall pod=x/a key=AAAAAAAAAAAAAAAA`,
		`-A PODWALL-INGRESS -d 10.0.0.2/32 -m comment --comment "podwall pod=x/a key=AAAAAAAAAAAAAAAA`,
		`-A PODWALL-T-AAAAAAAAAAAAAAAA -m physdev ! --physdev-out vetha --physdev-is-bridged -m comment --comment "podwall: 10.0.0.2 reaches x/a only through vetha" -j DROP`,
		`-A PODWALL-ANTISPOOF -i vethb -m comment --comment "podwall pod=x/b key=BBBBBBBBBBBBBBBB`,
		`-A PODWALL-MISADDRESSED -o vethb -m comment --comment "podwall pod=x/b key=BBBBBBBBBBBBBBBB`,
		`-A PODWALL-F-BBBBBBBBBBBBBBBB -m comment --comment "podwall: x/b has no IPv6 address, drop all" -j DROP`,
		`-A PODWALL-IN-AAAAAAAAAAAAAAAA -m comment --comment "podwall: default deny x/a" -j DROP`,
	} {
		if !strings.Contains(first, want) {
			t.Errorf("kernel lacks %s\n%s", want, first)
		}
	}
}

func TestCheckPodDetectsTampering(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutRouted, "10.0.0.2")
	ensure := func() {
		n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error { return d.EnsurePod(ctx, a) })
	}
	check := func() error {
		return n.try(func(ctx context.Context, d *dataplane.Dataplane) error { return d.CheckPod(ctx, a) })
	}
	ensure()
	if err := check(); err != nil {
		t.Fatal(err)
	}
	for _, tamper := range [][]string{
		{"iptables", "-D", "PODWALL-EGRESS", "1"},
		{"iptables", "-D", "PODWALL-F-AAAAAAAAAAAAAAAA", "2"},
		{"ip6tables", "-D", "PODWALL-T-AAAAAAAAAAAAAAAA", "1"},
		{"iptables", "-D", "FORWARD", "1"},
	} {
		n.MustRun(t, tamper...)
		if err := check(); err == nil {
			t.Errorf("CheckPod passed after %v", tamper)
		} else {
			t.Logf("after %v: %v", tamper, err)
		}
		ensure() // repairs
		if err := check(); err != nil {
			t.Errorf("after repair of %v: %v", tamper, err)
		}
	}
}

func TestRemovePodLeavesNothing(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutBridge, "10.0.0.2", "fd00::2")
	b := testPod("x", "b", "BBBBBBBBBBBBBBBB", "vethb", dataplane.LayoutRouted, "10.0.0.3")
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		for _, p := range []dataplane.Pod{a, b} {
			if err := d.EnsurePod(ctx, p); err != nil {
				return err
			}
		}
		if err := d.RemovePod(ctx, a.Key); err != nil {
			return err
		}
		return d.RemovePod(ctx, a.Key) // idempotent
	})
	if s := n.save(t); strings.Contains(s, "AAAAAAAAAAAAAAAA") || !strings.Contains(s, "BBBBBBBBBBBBBBBB") {
		t.Fatalf("after removing a:\n%s", s)
	}
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		if err := d.RemovePod(ctx, b.Key); err != nil {
			return err
		}
		return d.RemovePod(ctx, b.Key)
	})
	if s := n.save(t); strings.Contains(s, "PODWALL") {
		t.Fatalf("after removing all pods:\n%s", s)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if s := n.MustRun(t, cmd, "-S"); strings.Contains(s, "PODWALL") {
			t.Fatalf("%s -S:\n%s", cmd, s)
		}
	}
}

func TestProbe(t *testing.T) {
	n := newTestNode(t)
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error { return d.Probe(ctx) })
	if s := n.save(t); strings.Contains(s, "PODWALL") {
		t.Fatalf("probe left chains:\n%s", s)
	}
	if s := n.MustRun(t, "ipset", "list", "-n"); strings.TrimSpace(s) != "" {
		t.Fatalf("probe left sets: %s", s)
	}
}

func TestApplyWritesOnlyDifferences(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutRouted, "10.0.0.2")
	b := testPod("x", "b", "BBBBBBBBBBBBBBBB", "vethb", dataplane.LayoutRouted, "10.0.0.3")
	c := testPod("x", "c", "CCCCCCCCCCCCCCCC", "vethc", dataplane.LayoutRouted, "10.0.0.4")
	var cl cluster
	cl.addPod(a, map[string]string{"app": "web"})
	cl.addPod(b, map[string]string{"app": "client"})
	cl.addPolicy(t, `
metadata: {namespace: x, name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80, protocol: TCP}, {port: 8000, endPort: 8010, protocol: UDP}]
`)
	// Every kind of set: hash:net with nomatch and host entries, and
	// hash:ip,port from a named port; the second Apply must find them equal.
	cl.addPolicy(t, `
metadata: {namespace: x, name: out}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}}, {ipBlock: {cidr: 192.0.2.7/32}}]
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http, protocol: TCP}]
`)
	pods := []dataplane.Pod{a, b, c}
	apply := func(want func(dataplane.ApplyStats) bool, desired *ruleset.Desired) {
		t.Helper()
		n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
			st, err := d.Apply(ctx, dataplane.Target{Pods: pods, Policy: desired})
			if err != nil {
				return err
			}
			if !want(st) {
				t.Errorf("unexpected stats %+v", st)
			} else {
				t.Logf("stats %+v", st)
			}
			return nil
		})
	}
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		for _, p := range []dataplane.Pod{a, b, c} {
			if err := d.EnsurePod(ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
	d1 := cl.compile(t)
	if len(d1.Sets) < 3 {
		t.Fatalf("want sets of several kinds, got %+v", d1.Sets)
	}
	apply(func(s dataplane.ApplyStats) bool {
		return s.ChainsWritten == 8 && s.SetsCreated == len(d1.Sets) && !s.Unchanged
	}, d1)
	save := n.save(t)
	if !strings.Contains(save, "--match-set PODWALL-PODS4-") || !strings.Contains(save, "podwall: rules sha256=") {
		t.Errorf("policy not in the kernel:\n%s", save)
	}
	// Again, and with a fresh Dataplane (agent restart): nothing to do.
	apply(func(s dataplane.ApplyStats) bool { return s.Unchanged }, d1)
	apply(func(s dataplane.ApplyStats) bool { return s.Unchanged }, cl.compile(t))

	// A new client only adds a set member.
	cl.addPod(c, map[string]string{"app": "client"})
	apply(func(s dataplane.ApplyStats) bool {
		return s.EntriesAdded == 1 && s.ChainsWritten == 4 && s.SetsCreated == 0 // c's own chains, both families
	}, cl.compile(t))
	if s := n.MustRun(t, "ipset", "list"); !strings.Contains(s, "10.0.0.4") {
		t.Errorf("set lacks c:\n%s", s)
	}
	// Tampering with a policy chain is repaired.
	n.MustRun(t, "iptables", "-D", "PODWALL-IN-AAAAAAAAAAAAAAAA", "1")
	apply(func(s dataplane.ApplyStats) bool { return s.ChainsWritten == 1 }, cl.compile(t))

	// Dropping the policies rewrites the IPv4 chains that had allows and
	// destroys every set.
	cl.policies = nil
	apply(func(s dataplane.ApplyStats) bool { return s.ChainsWritten == 3 && s.SetsDestroyed == len(d1.Sets) }, cl.compile(t))
	if s := n.MustRun(t, "ipset", "list", "-n"); strings.TrimSpace(s) != "" {
		t.Errorf("sets left: %s", s)
	}
	// A pod removed meanwhile is skipped, and everything goes at the end.
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		if err := d.RemovePod(ctx, a.Key); err != nil {
			return err
		}
		st, err := d.Apply(ctx, dataplane.Target{Pods: []dataplane.Pod{b, c}, Policy: cl.compile(t)})
		if err != nil || !st.Unchanged {
			t.Errorf("apply after removal: %+v %v", st, err)
		}
		for _, p := range []dataplane.Pod{b, c} {
			if err := d.RemovePod(ctx, p.Key); err != nil {
				return err
			}
		}
		return nil
	})
	if s := n.save(t); strings.Contains(s, "PODWALL") {
		t.Fatalf("after removing all pods:\n%s", s)
	}
}

// Rules of the other iptables backend in the namespace make New refuse:
// packets would be judged twice and our verdict would not be the last.
func TestMixedBackendRefused(t *testing.T) {
	n := newTestNode(t)
	other := "iptables-legacy"
	if strings.Contains(n.MustRun(t, "iptables", "-V"), "legacy") {
		other = "iptables-nft"
	}
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error { return nil }) // clean namespace: fine
	n.MustRun(t, other, "-w", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT")
	err := n.try(func(ctx context.Context, d *dataplane.Dataplane) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "mixed") {
		t.Fatalf("New with %s rules present: %v, want a mixed-backend refusal", other, err)
	}
}
