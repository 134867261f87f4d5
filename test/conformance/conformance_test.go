package conformance_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
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
				mode, len(cases), total.steps, total.probes, total.allowed, total.probes-total.allowed, total.retried,
				total.self, total.sctp, zc.ip, time.Since(start).Round(time.Second))
			if total.allowed == 0 || total.allowed == total.probes {
				t.Errorf("the matcher never allowed or never denied: the comparison proves nothing")
			}
		})
	}
}

// tally counts what a run compared and left out.
type tally struct {
	steps, probes, allowed, retried, self, sctp int
}

func (t *tally) add(o tally) {
	t.steps += o.steps
	t.probes += o.probes
	t.allowed += o.allowed
	t.retried += o.retried
	t.self += o.self
	t.sctp += o.sctp
}

// job is one real connection and the matcher's verdict on it.
type job struct {
	cyclonus.Probe
	from, to *livePod
	want     *matcher.AllowedResult
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
	for si, step := range tc.Steps {
		n.steps++
		for _, a := range step.Actions {
			if err := c.Apply(a); err != nil {
				t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
			}
		}
		e.reconcile(c)
		oracle := c.Oracle(e.deny)
		var jobs []*job
		for _, from := range c.Pods {
			for _, to := range c.Pods {
				targets, err := cyclonus.Targets(step.Probe, cyclonus.ContainerPorts())
				if err != nil {
					t.Fatal(err)
				}
				src, dst := e.pods[from.Namespace+"/"+from.Name], e.pods[to.Namespace+"/"+to.Name]
				for _, tg := range targets {
					switch {
					case tg.Protocol == corev1.ProtocolSCTP:
						n.sctp++
						continue
					case src == dst:
						n.self++
						continue
					}
					want := oracle.IsTrafficAllowed(&matcher.Traffic{
						Source:           c.Peer(from, src.ip.String()),
						Destination:      c.Peer(to, dst.ip.String()),
						ResolvedPort:     tg.Port,
						ResolvedPortName: tg.PortName,
						Protocol:         tg.Protocol,
					})
					jobs = append(jobs, &job{
						Probe: cyclonus.Probe{From: src.pod, To: dst.ip, Target: tg, Want: want.IsAllowed()},
						from:  src, to: dst, want: want,
					})
				}
			}
		}
		probes := make([]*cyclonus.Probe, len(jobs))
		for i, j := range jobs {
			probes[i] = &j.Probe
		}
		probeTiming.Run(probes)
		var mismatches []*job
		for _, j := range jobs {
			n.probes++
			n.allowed += b2i(j.want.IsAllowed())
			n.retried += b2i(j.Retried)
			if j.Got != j.Want {
				mismatches = append(mismatches, j)
			}
		}
		if len(mismatches) > 0 {
			t.Errorf("%s", e.report(tc, si, c, mismatches))
		}
	}
	return n
}

// report renders a step's mismatches: the case, each connection with the
// matcher's egress and ingress verdicts and what the packets did, the
// chains of both pods, the node's sets and the policies judged.
func (e *env) report(tc *generator.TestCase, si int, c *cyclonus.Cluster, mismatches []*job) string {
	var b strings.Builder
	mode := "kubernetes"
	if e.deny {
		mode = "deny"
	}
	fmt.Fprintf(&b, "cyclonus case %q (tags %v), step %d of %d, %s mode: %d real connections differ from the matcher:\n",
		tc.Description, tc.Tags.Keys(), si+1, len(tc.Steps), mode, len(mismatches))
	for i, j := range mismatches {
		if i == shownMismatches {
			fmt.Fprintf(&b, "  ... and %d more\n", len(mismatches)-shownMismatches)
			break
		}
		got := "denied"
		if j.Got {
			got = "ALLOWED"
		}
		fmt.Fprintf(&b, "  %s (%s) -> %s (%s) %s/%d (%s): matcher egress=%t ingress=%t => allowed=%t; packets: %s (%v)\n",
			j.from.ref(), j.from.ip, j.to.ref(), j.to.ip, j.Target.Protocol, j.Target.Port, j.Target.PortName,
			j.want.Egress.IsAllowed(), j.want.Ingress.IsAllowed(), j.want.IsAllowed(), got, j.Err)
		b.WriteString(e.chains(j.from, "F", "OUT"))
		b.WriteString(e.chains(j.to, "T", "IN"))
	}
	b.WriteString("  sets in the node:\n")
	b.WriteString(e.ipsets())
	policies, _ := yaml.Marshal(c.OraclePolicies(e.deny))
	fmt.Fprintf(&b, "  policies judged by the matcher:\n%s", policies)
	return b.String()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
