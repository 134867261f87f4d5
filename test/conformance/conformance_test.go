package conformance_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"sigs.k8s.io/yaml"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/cyclonus"
)

// probeTiming: 128 probes at once; a probe whose verdict differs from the
// matcher's after 200 ms is tried again for a second before it counts.
var probeTiming = cyclonus.ProbeTiming{Workers: 128, Quick: 200 * time.Millisecond, Slow: time.Second}

// shownMismatches bounds the detail printed per step.
const shownMismatches = 6

// TestCyclonusRealPackets replays every test case of cyclonus' generator
// (all of GenerateAllTestCases, whatever tags its CLI excludes by default)
// on nine real pods, x/a..z/c, behind the chain bridge + podwall-ipam +
// podwall, with the real agent enforcing a policy directory that each step
// rewrites. After the agent has caught up, every (source pod, destination
// pod, port, protocol) of the step's probe is tried with a real TCP
// handshake or UDP echo and compared with cyclonus' matcher, in kubernetes
// mode and in deny mode. In deny mode the matcher gets a deny-all
// Ingress+Egress policy per namespace, and the cases alternate: plain ones
// write those deny-all policies into the directory too; "opened" ones
// write none, and add allow-all policies in y and z for the agent and the
// matcher alike (cyclonus.OpenPolicies), so that the agent's own deny
// default meets the oracle with traffic that policies allow, not only
// with everything denied.
//
// Left out, and counted in the summary: pod-to-itself (it goes over the
// pod's loopback and never reaches a chain) and SCTP (this kernel has no
// SCTP sockets; TestSCTPRawPackets proves the SCTP rules with raw packets).
func TestCyclonusRealPackets(t *testing.T) {
	for _, mode := range []policy.Mode{policy.ModeKubernetes, policy.ModeDeny} {
		t.Run(string(mode), func(t *testing.T) {
			start := time.Now()
			e := newEnv(t, mode)
			zc := e.pods["z/c"]
			cases, err := cyclonus.Cases(true, zc.ip.String())
			if err != nil {
				t.Fatal(err)
			}
			if len(cases) != cyclonus.CaseCount {
				t.Fatalf("cyclonus generates %d test cases, want %d: update this test", len(cases), cyclonus.CaseCount)
			}
			var total tally
			for i, tc := range cases {
				t.Run(fmt.Sprintf("%03d", i), func(t *testing.T) { total.add(e.runCase(t, tc)) })
			}
			t.Logf("%s mode: %d cases, %d steps, %d probes with real packets (%d allowed by the matcher, %d denied), %d retried; "+
				"left out: %d pod-to-itself, %d SCTP; z/c at %s; %v",
				mode, len(cases), total.steps, total.Probes, total.Allowed, total.Probes-total.Allowed, total.Retried,
				total.Self, total.SCTP, zc.ip, time.Since(start).Round(time.Second))
			if total.Allowed == 0 || total.Allowed == total.Probes {
				t.Errorf("the matcher never allowed or never denied: the comparison proves nothing")
			}
		})
	}
}

// tally counts what a run compared and left out.
type tally struct {
	steps int
	cyclonus.Counts
}

func (t *tally) add(o tally) {
	t.steps += o.steps
	t.Counts.Add(o.Counts)
}

func (e *env) runCase(t *testing.T, tc *generator.TestCase) (n tally) {
	e.t = t
	e.denyAllInDir = !e.denyAllInDir
	c := cyclonus.NewCluster()
	if e.deny && !e.denyAllInDir {
		// Opened: y and z allow everything, so x's pods meet the agent's
		// own default and the case's policies decide the rest.
		c.Policies = cyclonus.OpenPolicies("y", "z")
	}
	live := func(p *cyclonus.Pod) (cyclonus.Endpoint, bool) {
		lp := e.pods[p.Namespace+"/"+p.Name]
		if lp == nil {
			return cyclonus.Endpoint{}, false
		}
		return cyclonus.Endpoint{Ref: lp.ref(), NetNS: lp.pod, IP: lp.ip}, true
	}
	for si, step := range tc.Steps {
		n.steps++
		for _, a := range step.Actions {
			if err := c.Apply(a); err != nil {
				t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
			}
		}
		e.reconcile(c)
		mismatches, counts, err := probeTiming.ProbeStep(c, e.deny, step.Probe, live)
		if err != nil {
			t.Fatal(err)
		}
		n.Counts.Add(counts)
		if len(mismatches) > 0 {
			t.Errorf("%s", e.report(tc, si, c, mismatches))
		}
	}
	return n
}

// report renders a step's mismatches: the case, each connection with the
// matcher's egress and ingress verdicts and what the packets did, the
// chains of both pods, the node's sets and the policies judged.
func (e *env) report(tc *generator.TestCase, si int, c *cyclonus.Cluster, mismatches []*cyclonus.Check) string {
	var b strings.Builder
	mode := "kubernetes"
	if e.deny {
		mode = "deny"
	}
	fmt.Fprintf(&b, "cyclonus case %q (tags %v), step %d of %d, %s mode: %d real connections differ from the matcher:\n",
		tc.Description, tc.Tags.Keys(), si+1, len(tc.Steps), mode, len(mismatches))
	for i, m := range mismatches {
		if i == shownMismatches {
			fmt.Fprintf(&b, "  ... and %d more\n", len(mismatches)-shownMismatches)
			break
		}
		got := "denied"
		if m.Got {
			got = "ALLOWED"
		}
		fmt.Fprintf(&b, "  %s (%s) -> %s (%s) %s/%d (%s): matcher egress=%t ingress=%t => allowed=%t; packets: %s (%v)\n",
			m.Source.Ref, m.Source.IP, m.Destination.Ref, m.Destination.IP, m.Target.Protocol, m.Target.Port, m.Target.PortName,
			m.Verdict.Egress.IsAllowed(), m.Verdict.Ingress.IsAllowed(), m.Verdict.IsAllowed(), got, m.Err)
		b.WriteString(e.chains(e.pods[m.Source.Ref], "F", "OUT"))
		b.WriteString(e.chains(e.pods[m.Destination.Ref], "T", "IN"))
	}
	b.WriteString("  sets in the node:\n")
	b.WriteString(e.ipsets())
	policies, _ := yaml.Marshal(c.OraclePolicies(e.deny))
	fmt.Fprintf(&b, "  policies judged by the matcher:\n%s", policies)
	return b.String()
}
