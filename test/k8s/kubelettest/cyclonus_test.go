package kubelettest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"sigs.k8s.io/yaml"

	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/harness"
)

// cyclonusProbeTiming: 128 probes at once; a probe whose verdict differs
// from the matcher's after 200 ms is tried again for a second before it counts.
var cyclonusProbeTiming = cyclonus.ProbeTiming{Workers: 128, Quick: 200 * time.Millisecond, Slow: time.Second}

const (
	// spreadEvery: besides the cases that change anything but policies or
	// have more than one step, each mode replays every spreadEvery-th of
	// the other (single-step, create-policy) cases, the two modes from
	// different offsets, to keep the whole test within its CI budget (six
	// minutes on two cores; about two and a half here).
	spreadEvery = 4
	// caseTimeout bounds one case, pods created and deleted included.
	caseTimeout = 3 * time.Minute
	// shownMismatchesPerStep bounds the detail printed per step.
	shownMismatchesPerStep = 12
)

// TestCyclonusOnKubelet replays cyclonus' generated test cases through a
// real kube-apiserver on nine pods x/a..z/c that the real kubelet created
// on containerd and runc, with podwall installed by install.sh (chained
// after bridge, podwall-ipam handing out the Node's podCIDR) and the agent
// in Kubernetes mode, in kubernetes mode and in deny mode (agent
// --default-policy). Policies are created, updated and deleted, pod and
// namespace labels set, pods and namespaces created and deleted with
// client-go, as the cases say; after each step podwallctl wait returns,
// every (source pod, destination pod, port, protocol) of the step's probe
// is tried with a real TCP handshake or UDP echo from inside the source
// pod's network namespace, to servers the test runs inside each pod on TCP
// and UDP 80 and 81, and compared with cyclonus' matcher. In deny mode the
// matcher gets a deny-all Ingress+Egress policy per namespace; the API
// server does not: the agent's default is what is judged.
//
// Deny mode has a second variant, "opened": cyclonus' policies select a
// pod in x, and in deny mode a connection needs its source's egress and
// its destination's ingress allowed, so that all but 1 of the 230 cases
// deny every connection there. The opened variant adds, in the API server
// and for the matcher alike, an allow-all Ingress+Egress policy in
// namespaces y and z (cyclonus.OpenPolicies): the agent's default then governs x,
// and x's policies meet open peers, so their rules decide what passes.
//
// Cases: every case with more than one step or with an action other than
// creating a policy (16 of cyclonus' 230: pod and namespace labels, pods
// and namespaces created and deleted, policy updates and deletions,
// stacked policies), in both modes (both variants in deny mode), and every
// spreadEvery-th of the other 214 in index order, from offset 0 in
// kubernetes mode and 1 in deny mode (54 each, none in both; the
// deny-mode ones alternate between the variants, and case 228, the one
// that allows something in plain deny mode, falls on a plain one): 124 of
// the 230 cases in all. test/conformance replays all 230 on the same chain
// against a policy directory.
//
// Left out, and counted in the summary: pod-to-itself (it goes over the
// pod's own loopback and never reaches a chain) and SCTP (this kernel has
// no SCTP sockets; test/conformance's TestSCTPRawPackets proves the SCTP
// rules with raw packets).
func TestCyclonusOnKubelet(t *testing.T) {
	harness.CheckHostUnchanged(t)
	for _, mode := range []string{"kubernetes", "deny"} {
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			e := newKubeletEnv(t, mode)
			zc := e.pods["z/c"]
			cases, err := cyclonus.Cases(true, zc.ip.String())
			if err != nil {
				t.Fatal(err)
			}
			if len(cases) != cyclonus.CaseCount {
				t.Fatalf("cyclonus generates %d test cases, want %d: update this test", len(cases), cyclonus.CaseCount)
			}
			runs := pickRuns(cases, e.deny)
			total := map[bool]*cyclonusTally{false: {}, true: {}}
			var perCase []time.Duration
			for _, r := range runs {
				started, completed := false, false // -run may filter the case out
				t.Run(r.name(), func(t *testing.T) {
					started = true
					caseStart := time.Now()
					total[r.opened].add(e.runCase(t, cases[r.index], r.opened))
					perCase = append(perCase, time.Since(caseStart))
					completed = true
				})
				if started && !completed {
					t.Fatalf("case %s stopped half-way: the cluster no longer matches the model, the other cases would prove nothing", r.name())
				}
			}
			all := &cyclonusTally{}
			for _, opened := range []bool{false, true} {
				n := total[opened]
				all.add(*n)
				if n.cases == 0 {
					continue
				}
				variant := "plain"
				if opened {
					variant = "opened"
				}
				t.Logf("%s mode, %s: %d cases (%d changing more than policies or with several steps), %d steps, "+
					"%d probes with real packets (%d allowed by the matcher, %d denied), %d retried; left out: %d pod-to-itself, %d SCTP",
					mode, variant, n.cases, n.changing, n.steps, n.Probes, n.Allowed, n.Probes-n.Allowed, n.Retried, n.Self, n.SCTP)
				if n.Allowed == 0 || n.Allowed == n.Probes {
					t.Errorf("%s mode, %s: the matcher never allowed or never denied: the comparison proves nothing", mode, variant)
				}
			}
			t.Logf("%s mode: z/c at %s; %v in all; time per case (reset, steps, probes) p50 %v, p99 %v, max %v", mode,
				zc.ip, time.Since(start).Round(time.Second), nearestRank(perCase, 50), nearestRank(perCase, 99), nearestRank(perCase, 100))
			t.Logf("%s mode: API write -> podwallctl wait returned: over %d policy and label steps p50 %v, p99 %v, max %v; "+
				"over %d resets between cases (policies deleted, labels restored) p50 %v, p99 %v; "+
				"over %d steps creating or deleting pods or namespaces (kubelet included) p50 %v, max %v", mode,
				len(all.stepEnforce), nearestRank(all.stepEnforce, 50), nearestRank(all.stepEnforce, 99), nearestRank(all.stepEnforce, 100),
				len(all.resetEnforce), nearestRank(all.resetEnforce, 50), nearestRank(all.resetEnforce, 99),
				len(all.lifecycleEnforce), nearestRank(all.lifecycleEnforce, 50), nearestRank(all.lifecycleEnforce, 100))
		})
	}
}

// caseRun is one case replayed in one variant.
type caseRun struct {
	index    int
	opened   bool // with cyclonus.OpenPolicies
	changing bool // several steps, or an action other than creating a policy
}

func (r caseRun) name() string {
	if r.opened {
		return fmt.Sprintf("%03d-opened", r.index)
	}
	return fmt.Sprintf("%03d", r.index)
}

// pickRuns returns what a mode replays (see TestCyclonusOnKubelet): every
// changing case (in deny mode plain and opened), and every spreadEvery-th
// of the others (in deny mode from offset 1, alternately plain and
// opened).
func pickRuns(cases []*generator.TestCase, deny bool) []caseRun {
	var runs []caseRun
	var rest []int
	for i, tc := range cases {
		if len(tc.Steps) > 1 || slices.ContainsFunc(tc.Steps[0].Actions, func(a *generator.Action) bool { return a.CreatePolicy == nil }) {
			runs = append(runs, caseRun{index: i, changing: true})
			if deny {
				runs = append(runs, caseRun{index: i, opened: true, changing: true})
			}
		} else {
			rest = append(rest, i)
		}
	}
	offset := 0
	if deny {
		offset = 1
	}
	for k, j := 0, offset; j < len(rest); k, j = k+1, j+spreadEvery {
		runs = append(runs, caseRun{index: rest[j], opened: deny && k%2 == 0})
	}
	slices.SortStableFunc(runs, func(a, b caseRun) int { return a.index - b.index })
	return runs
}

// cyclonusTally counts what runs compared and left out, and how long the
// agent took to enforce each change.
type cyclonusTally struct {
	cases, changing, steps int
	cyclonus.Counts
	// stepEnforce: policy and label steps; lifecycleEnforce: steps
	// creating or deleting pods or namespaces; resetEnforce: resets.
	stepEnforce, lifecycleEnforce, resetEnforce []time.Duration
}

func changesPods(a *generator.Action) bool {
	return a.CreatePod != nil || a.DeletePod != nil || a.CreateNamespace != nil || a.DeleteNamespace != nil
}

func (t *cyclonusTally) add(o cyclonusTally) {
	t.cases += o.cases
	t.changing += o.changing
	t.steps += o.steps
	t.Counts.Add(o.Counts)
	t.stepEnforce = append(t.stepEnforce, o.stepEnforce...)
	t.lifecycleEnforce = append(t.lifecycleEnforce, o.lifecycleEnforce...)
	t.resetEnforce = append(t.resetEnforce, o.resetEnforce...)
}

func (e *kubeletEnv) runCase(t *testing.T, tc *generator.TestCase, opened bool) (n cyclonusTally) {
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	n.cases = 1
	if len(tc.Steps) > 1 || slices.ContainsFunc(tc.Steps[0].Actions, func(a *generator.Action) bool { return a.CreatePolicy == nil }) {
		n.changing = 1
	}
	base := cyclonus.NewCluster()
	if opened {
		base.Policies = cyclonus.OpenPolicies("y", "z")
	}
	e.opened = opened
	begin := time.Now()
	if err := e.reset(ctx, base); err != nil {
		t.Fatalf("resetting the cluster: %v", err)
	}
	if err := e.enforce(ctx); err != nil {
		t.Fatal(err)
	}
	n.resetEnforce = append(n.resetEnforce, time.Since(begin))
	for si, step := range tc.Steps {
		n.steps++
		// The time to enforcement runs from the step's first API write to
		// podwallctl wait returning; a step creating or deleting pods or
		// namespaces is counted apart, since the kubelet's work is in it.
		written := time.Now()
		for _, a := range step.Actions {
			if err := e.apply(ctx, a); err != nil {
				t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
			}
		}
		if err := e.enforce(ctx); err != nil {
			t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
		}
		switch took := time.Since(written); {
		case len(step.Actions) == 0: // probes again only
		case slices.ContainsFunc(step.Actions, changesPods):
			n.lifecycleEnforce = append(n.lifecycleEnforce, took)
		default:
			n.stepEnforce = append(n.stepEnforce, took)
		}
		if err := e.checkAPI(ctx); err != nil {
			t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
		}
		mismatches, counts, err := cyclonusProbeTiming.ProbeStep(e.live, e.deny, step.Probe, e.endpoint)
		if err != nil {
			t.Fatalf("%q step %d: %v", tc.Description, si+1, err)
		}
		n.Counts.Add(counts)
		if len(mismatches) > 0 {
			t.Errorf("%s", e.report(tc, si, counts.Probes, mismatches))
		}
	}
	return n
}

// endpoint is where a pod of the model runs.
func (e *kubeletEnv) endpoint(p *cyclonus.Pod) (cyclonus.Endpoint, bool) {
	lp := e.pods[p.Namespace+"/"+p.Name]
	if lp == nil {
		return cyclonus.Endpoint{}, false
	}
	return cyclonus.Endpoint{Ref: lp.ref(), NetNS: lp.netns, IP: lp.ip}, true
}

// report renders a step's mismatches as a table: each connection with the
// matcher's egress and ingress verdicts and what the packets did; then the
// node's rules naming the pods involved, its sets, the policies judged and
// the agent's last words.
func (e *kubeletEnv) report(tc *generator.TestCase, si, probed int, mismatches []*cyclonus.Check) string {
	var b strings.Builder
	mode := "kubernetes mode"
	if e.deny {
		mode = "deny mode"
	}
	if e.opened {
		mode += " (opened: allow-all policies in y and z)"
	}
	fmt.Fprintf(&b, "cyclonus case %q (tags %v), step %d of %d, %s: %d of %d real connections differ from the matcher:\n",
		tc.Description, tc.Tags.Keys(), si+1, len(tc.Steps), mode, len(mismatches), probed)
	w := tabwriter.NewWriter(&b, 2, 8, 2, ' ', 0)
	fmt.Fprintln(w, "  FROM\tTO\tPORT\tMATCHER egress\tingress\t=> allowed\tPACKETS\tERROR")
	pods := map[string]*livePod{}
	for i, m := range mismatches {
		if i == shownMismatchesPerStep {
			fmt.Fprintf(w, "  ... and %d more\n", len(mismatches)-shownMismatchesPerStep)
			break
		}
		got := "denied"
		if m.Got {
			got = "ALLOWED"
		}
		fmt.Fprintf(w, "  %s %s\t%s %s\t%s/%d %s\t%t\t%t\t%t\t%s\t%v\n",
			m.Source.Ref, m.Source.IP, m.Destination.Ref, m.Destination.IP, m.Target.Protocol, m.Target.Port, m.Target.PortName,
			m.Verdict.Egress.IsAllowed(), m.Verdict.Ingress.IsAllowed(), m.Verdict.IsAllowed(), got, m.Err)
		pods[m.Source.Ref], pods[m.Destination.Ref] = e.pods[m.Source.Ref], e.pods[m.Destination.Ref]
	}
	w.Flush()
	b.WriteString("  rules of the node naming those pods:\n")
	b.WriteString(e.rulesNaming(pods))
	b.WriteString("  sets in the node:\n")
	b.WriteString(e.ipsets())
	policies, _ := yaml.Marshal(e.live.OraclePolicies(e.deny))
	fmt.Fprintf(&b, "  policies judged by the matcher:\n%s", policies)
	fmt.Fprintf(&b, "  agent log:\n%s", e.podwall.AgentLog(20))
	return b.String()
}

// rulesNaming lists the node's iptables rules whose comments name one of
// the pods.
func (e *kubeletEnv) rulesNaming(pods map[string]*livePod) string {
	out, err := e.node.Node.Run("iptables", "-w", "-S")
	if err != nil {
		return fmt.Sprintf("    (iptables -S: %v)\n", err)
	}
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		for ref := range pods {
			if strings.Contains(line, ref+" ") || strings.Contains(line, ref+"\"") {
				fmt.Fprintf(&b, "    %s\n", line)
				break
			}
		}
	}
	return b.String()
}

// ipsets lists the node's sets with their members.
func (e *kubeletEnv) ipsets() string {
	out, err := e.node.Node.Run("ipset", "list")
	if err != nil {
		return fmt.Sprintf("    (ipset list: %v)\n", err)
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "Name:") || (line != "" && !strings.Contains(line, ":")) {
			fmt.Fprintf(&b, "    %s\n", line)
		}
	}
	return b.String()
}

// nearestRank returns the p-th nearestRank (nearest rank) of ds.
func nearestRank(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))].Round(time.Millisecond)
}
