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

// The first Apply after the plugin installed a pod inserts the pod's
// policy ahead of the plugin's default deny instead of flushing the chain
// (a commit that deletes costs the kernel a grace period on the ADD
// path). Whether Apply knows the fresh chain from its memory or reads it
// back, the result is the policy, its fingerprint and
// the dead default deny, which no later Apply finds out of date; a policy
// change rewrites the chain whole.
func TestApplyIntoFreshChainsInsertsAheadOfDefaultDeny(t *testing.T) {
	n := newTestNode(t)
	a := testPod("x", "a", "AAAAAAAAAAAAAAAA", "vetha", dataplane.LayoutRouted, "10.0.0.2")
	b := testPod("x", "b", "BBBBBBBBBBBBBBBB", "vethb", dataplane.LayoutBridge, "10.0.0.3", "fd00::3")
	var cl cluster
	cl.addPod(a, map[string]string{"app": "web"})
	cl.addPolicy(t, `
metadata: {namespace: x, name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
`)
	ensure := func(p dataplane.Pod) {
		t.Helper()
		n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error { return d.EnsurePod(ctx, p) })
	}
	var agent *dataplane.Dataplane
	agentApply := func(pods []dataplane.Pod, desired *ruleset.Desired) dataplane.ApplyStats {
		t.Helper()
		var st dataplane.ApplyStats
		err := n.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if agent == nil {
				var err error
				if agent, err = dataplane.New(dataplane.Config{StateDir: n.stateDir, MaxStateAge: time.Hour}, slog.New(slog.DiscardHandler)); err != nil {
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
	freshApply := func(pods []dataplane.Pod, desired *ruleset.Desired) dataplane.ApplyStats {
		t.Helper()
		var st dataplane.ApplyStats
		n.dp(t, func(ctx context.Context, d *dataplane.Dataplane) error {
			var err error
			st, err = d.Apply(ctx, dataplane.Target{Pods: pods, Policy: desired})
			return err
		})
		return st
	}
	// chain returns the chain's rules as iptables -S prints them.
	chain := func(cmd, name string) []string {
		t.Helper()
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(n.MustRun(t, cmd, "-S", name)), "\n") {
			if strings.HasPrefix(l, "-A ") {
				out = append(out, l)
			}
		}
		return out
	}
	wantInserted := func(cmd, name string, rules int) {
		t.Helper()
		got := chain(cmd, name)
		if len(got) != rules+2 || !strings.Contains(got[rules], "podwall: rules sha256=") ||
			!strings.Contains(got[rules+1], "podwall: default deny x/") {
			t.Errorf("%s %s: want %d policy rules, the fingerprint and the default deny:\n%s", cmd, name, rules, strings.Join(got, "\n"))
		}
	}

	// The agent's memory does not know a: its write fails and it reads
	// the kernel back.
	agentApply(nil, cl.compile(t))
	ensure(a)
	d1 := cl.compile(t)
	if st := agentApply([]dataplane.Pod{a}, d1); st.ChainsWritten != 4 {
		t.Errorf("a attached: %+v, want its 4 chains written", st)
	}
	wantInserted("iptables", "PODWALL-IN-AAAAAAAAAAAAAAAA", 2) // the allow, the policy's default deny
	wantInserted("ip6tables", "PODWALL-OUT-AAAAAAAAAAAAAAAA", 1)
	if st := freshApply([]dataplane.Pod{a}, d1); !st.Unchanged {
		t.Errorf("a's inserted chains read back as out of date: %+v", st)
	}

	// A restarted agent reads b's new chains back from the kernel.
	ensure(b)
	cl.addPod(b, map[string]string{"app": "client"})
	d2 := cl.compile(t)
	agent = nil
	if st := agentApply([]dataplane.Pod{a, b}, d2); st.ChainsWritten != 4 || st.EntriesAdded != 1 {
		t.Errorf("b attached: %+v, want its 4 chains written and a's peer set grown", st)
	}
	wantInserted("iptables", "PODWALL-IN-BBBBBBBBBBBBBBBB", 1)
	wantInserted("ip6tables", "PODWALL-IN-BBBBBBBBBBBBBBBB", 1)
	if st := agentApply([]dataplane.Pod{a, b}, d2); !st.Unchanged {
		t.Errorf("the agent rewrote chains that are up to date: %+v", st)
	}
	if st := freshApply([]dataplane.Pod{a, b}, d2); !st.Unchanged {
		t.Errorf("b's inserted chains read back as out of date: %+v", st)
	}

	// A policy change rewrites a's ingress chain whole: the default deny
	// goes with the flush.
	cl.policies = nil
	d3 := cl.compile(t)
	if st := agentApply([]dataplane.Pod{a, b}, d3); st.ChainsWritten != 1 {
		t.Errorf("policy removed: %+v, want a's IPv4 ingress chain rewritten", st)
	}
	if got := chain("iptables", "PODWALL-IN-AAAAAAAAAAAAAAAA"); len(got) != 2 || strings.Contains(strings.Join(got, "\n"), "podwall: default deny x/") {
		t.Errorf("rewritten chain:\n%s", strings.Join(got, "\n"))
	}
	if st := freshApply([]dataplane.Pod{a, b}, d3); !st.Unchanged {
		t.Errorf("after the rewrite: %+v", st)
	}
}
