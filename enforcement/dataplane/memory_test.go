package dataplane_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// An agent's Dataplane remembers the kernel between Applies. The plugin's
// fallback (other Dataplanes) adding and removing pods meanwhile, and a
// chain changed by hand, must never leave it believing something the
// kernel does not hold: after each of its Applies, a fresh Dataplane (which
// reads everything back) finds nothing to do.
func TestApplyMemoryFollowsOtherWriters(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutRouted, "10.0.0.2")
	b := testPod("x", "b", "BBBBBBBBBBBBBBBB", "vethb", dataplane.LayoutBridge, "10.0.0.3", "fd00::3")
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
`)
	var agent *dataplane.Dataplane
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		for _, p := range []dataplane.Pod{a, b} {
			if err := d.EnsurePod(ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
	agentApply := func(pods []dataplane.Pod, desired *ruleset.Desired) dataplane.ApplyStats {
		t.Helper()
		var st dataplane.ApplyStats
		err := n.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if agent == nil {
				var err error
				agent, err = dataplane.New(dataplane.Config{StateDir: n.stateDir, MaxStateAge: time.Hour}, slog.New(slog.DiscardHandler))
				if err != nil {
					return err
				}
			}
			var err error
			st, err = agent.Apply(ctx, dataplane.Target{Pods: pods, Policy: desired})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	checkFresh := func(step string, pods []dataplane.Pod, desired *ruleset.Desired) {
		t.Helper()
		n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
			st, err := d.Apply(ctx, dataplane.Target{Pods: pods, Policy: desired})
			if err == nil && !st.Unchanged {
				t.Errorf("%s: the agent's Apply left work for a fresh one: %+v", step, st)
			}
			return err
		})
	}

	ab := []dataplane.Pod{a, b}
	d1 := cl.compile(t)
	agentApply(ab, d1)
	checkFresh("first apply", ab, d1)
	if st := agentApply(ab, d1); !st.Unchanged {
		t.Errorf("same state again: %+v", st)
	}

	// The plugin's fallback adds c and removes b behind the agent's back:
	// the agent's write, planned from memory, fails, and it reads back.
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		if err := d.EnsurePod(ctx, c); err != nil {
			return err
		}
		return d.RemovePod(ctx, b.Key)
	})
	cl.addPod(c, map[string]string{"app": "client"})
	ac := []dataplane.Pod{a, c}
	d2 := cl.compile(t)
	if st := agentApply(ac, d2); st.ChainsWritten != 4 {
		t.Errorf("after the plugin added c: %+v, want c's 4 policy chains written into its fresh chains", st)
	}
	checkFresh("after plugin changes", ac, d2)

	// A chain changed by hand is repaired by the first Apply that reads the
	// tables back (after MaxStateAge; a fresh Dataplane here).
	n.MustRun(t, "iptables", "-D", "PODWALL-IN-CCCCCCCCCCCCCCCC", "1")
	n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
		st, err := d.Apply(ctx, dataplane.Target{Pods: ac, Policy: d2})
		if err == nil && st.ChainsWritten != 1 {
			t.Errorf("hand change not repaired: %+v", st)
		}
		return err
	})
	checkFresh("after the repair", ac, d2)
	if s := n.save(t); strings.Count(s, ":PODWALL-IN-") != 4 {
		t.Errorf("want the policy chains of a and c, both families:\n%s", s)
	}
}
