package enforcementtest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/podwall/podwall/test/harness"
)

// Probing timings: a new connection every probeEvery per pair, each judged
// by whether its handshake completes within probeAnswer. A SYN is judged
// where it crosses the node, right after it is sent, so each attempt
// samples the verdict at one instant.
const (
	probeEvery  = 4 * time.Millisecond
	probeAnswer = 900 * time.Millisecond // under the 1s SYN retransmission: only the first SYN is judged
	probePort   = 80
	settle      = 150 * time.Millisecond
)

// probeState is one state of the policy dir: pod labels, the policies in
// force, and the pairs ("a->c") it allows, worked out by hand and checked
// against modelAllowed before the run.
type probeState struct {
	name     string
	roles    map[string]string // pod -> role label
	policies []string          // keys of probePolicies
	allowed  []string
}

var probeRoles = map[string]string{"a": "client", "b": "client", "c": "server", "d": "db"}

func withRole(pod, role string) map[string]string {
	m := map[string]string{}
	for k, v := range probeRoles {
		m[k] = v
	}
	m[pod] = role
	return m
}

// Every state lets every pod send anywhere, so a verdict is decided by the
// destination's ingress policy alone.
var probePolicies = map[string]string{
	"egress-all": `podSelector: {}
  policyTypes: [Egress]
  egress: [{}]`,
	"c-from-clients": `podSelector: {matchLabels: {name: c}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]`,
	"c-from-a": `podSelector: {matchLabels: {name: c}}
  ingress: [{from: [{podSelector: {matchLabels: {name: a}}}], ports: [{port: 80}]}]`,
	"d-from-servers": `podSelector: {matchLabels: {name: d}}
  ingress: [{from: [{podSelector: {matchLabels: {role: server}}}]}]`,
	"a-from-clients": `podSelector: {matchLabels: {name: a}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]`,
}

// probeIngress says, for each policy, which destination it selects and
// which sources it admits; egress-all selects every pod and admits every
// destination. It is the model the hand-written truth tables are checked
// against.
var probeIngress = map[string]struct {
	selects func(pod string) bool
	admits  func(src string, roles map[string]string) bool
}{
	"c-from-clients": {func(p string) bool { return p == "c" }, func(s string, r map[string]string) bool { return r[s] == "client" }},
	"c-from-a":       {func(p string) bool { return p == "c" }, func(s string, r map[string]string) bool { return s == "a" }},
	"d-from-servers": {func(p string) bool { return p == "d" }, func(s string, r map[string]string) bool { return r[s] == "server" }},
	"a-from-clients": {func(p string) bool { return p == "a" }, func(s string, r map[string]string) bool { return r[s] == "client" }},
}

// modelAllowed computes the pairs a state allows, in deny mode.
func (s probeState) modelAllowed() []string {
	var out []string
	for _, from := range slices.Sorted(maps.Keys(s.roles)) {
		for _, to := range slices.Sorted(maps.Keys(s.roles)) {
			if from == to {
				continue
			}
			selected, admitted := false, false
			for _, p := range s.policies {
				if in, ok := probeIngress[p]; ok && in.selects(to) {
					selected = true
					admitted = admitted || in.admits(from, s.roles)
				}
			}
			if selected && admitted {
				out = append(out, from+"->"+to)
			}
		}
	}
	return out
}

var (
	stNone      = probeState{"no policy", probeRoles, []string{"egress-all"}, nil}
	stClients   = probeState{"c from clients", probeRoles, []string{"egress-all", "c-from-clients"}, []string{"a->c", "b->c"}}
	stTiers     = probeState{"c from clients, d from servers", probeRoles, []string{"egress-all", "c-from-clients", "d-from-servers"}, []string{"a->c", "b->c", "c->d"}}
	stOnlyA     = probeState{"c from a only, d from servers", probeRoles, []string{"egress-all", "c-from-a", "d-from-servers"}, []string{"a->c", "c->d"}}
	stBRelabled = probeState{"b relabelled server", withRole("b", "server"), []string{"egress-all", "c-from-clients", "d-from-servers"}, []string{"a->c", "c->d", "b->d"}}
	// The next two differ in a label and a policy at once: d joins the
	// clients while c's policy (which admits clients) goes away. d->c is
	// denied in both, but the set of clients is shared with a's policy and
	// so survives: if the set gained d before c's chain lost its rule,
	// d->c would pass in between.
	stSharedOld = probeState{"c and a from clients", probeRoles, []string{"egress-all", "c-from-clients", "a-from-clients"}, []string{"a->c", "b->c", "b->a"}}
	stSharedNew = probeState{"d relabelled client, c's policy gone", withRole("d", "client"), []string{"egress-all", "a-from-clients"}, []string{"b->a", "d->a"}}
)

func (s probeState) write(t *testing.T, dir string) {
	t.Helper()
	var pods strings.Builder
	for _, name := range slices.Sorted(maps.Keys(s.roles)) {
		fmt.Fprintf(&pods, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: x, labels: {name: %s, role: %s}}\n", name, name, s.roles[name])
	}
	var pols strings.Builder
	for _, p := range s.policies {
		fmt.Fprintf(&pols, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: x}\nspec:\n  %s\n", p, probePolicies[p])
	}
	writePolicyFile(t, dir, "pods.yaml", pods.String())
	writePolicyFile(t, dir, "policies.yaml", pols.String())
}

// sample is one connection attempt: when its SYN was sent, and whether
// the handshake completed.
type sample struct {
	// The SYN left between sent and sentBy (before and after connect):
	// a preempted prober cannot make a probe look earlier or later.
	sent, sentBy time.Time
	ok           bool
}

// probe opens a new non-blocking connection from inside the pod to target
// every probeEvery until stop is closed. It runs on one thread locked
// into the pod's namespace (the sockets are created there).
func probe(from *harness.Pod, target netip.AddrPort, stop <-chan struct{}) ([]sample, error) {
	var samples []sample
	err := from.Do(func() error {
		type attempt struct {
			fd           int
			sent, sentBy time.Time
		}
		var pending []attempt
		sa := &syscall.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
		finish := func(a attempt, ok bool) {
			samples = append(samples, sample{a.sent, a.sentBy, ok})
			syscall.Close(a.fd)
		}
		defer func() {
			for _, a := range pending {
				syscall.Close(a.fd)
			}
		}()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				// Attempts still pending have had less than probeAnswer;
				// they are not judged.
				return nil
			case <-tick.C:
			}
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			// Reset on close: no TIME_WAIT piling up over thousands of probes.
			_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
			sent := time.Now()
			if err := syscall.Connect(fd, sa); err != nil && !errors.Is(err, syscall.EINPROGRESS) {
				syscall.Close(fd)
				return fmt.Errorf("connect to %s: %w", target, err)
			}
			pending = append(pending, attempt{fd, sent, time.Now()})
			if n%12 != 0 {
				continue
			}
			now := time.Now()
			keep := pending[:0]
			for _, a := range pending {
				if _, err := syscall.Getpeername(a.fd); err == nil {
					// Connected, but maybe only by a retransmitted SYN
					// (a prober slowed down by a loaded machine checks
					// late): then the first SYN, the one judged, was not
					// let through.
					info, err := tcpInfo(a.fd)
					finish(a, err == nil && info.Total_retrans == 0 && info.Retransmits == 0)
					continue
				}
				if soErr, _ := syscall.GetsockoptInt(a.fd, syscall.SOL_SOCKET, syscall.SO_ERROR); soErr != 0 {
					// A refusal means the SYN got through to the pod.
					finish(a, syscall.Errno(soErr) == syscall.ECONNREFUSED)
					continue
				}
				if now.Sub(a.sent) > probeAnswer {
					finish(a, false)
					continue
				}
				keep = append(keep, a)
			}
			pending = keep
		}
	})
	return samples, err
}

func tcpInfo(fd int) (*syscall.TCPInfo, error) {
	var info syscall.TCPInfo
	size := uint32(syscall.SizeofTCPInfo)
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.SOL_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return nil, errno
	}
	return &info, nil
}

// probeStep is a change made while probing: from one state to another
// (the same for a restart), between start and end.
type probeStep struct {
	name       string
	from, to   probeState
	start, end time.Time
	restart    bool
}

// verdicts over one probing run, per pair.
type probeReport struct {
	violations []string                  // denied before and after, allowed in between, or wrong while steady
	windows    map[string]map[string]int // step name -> pair allowed before and after -> probes of it denied in between
	late       []string                  // steady state, allowed by policy, denied
}

// TestProbingThroughUpdatesAndRestart probes every pair of four pods
// continuously while the policy dir goes through a sequence of changes
// (policies, labels, and both at once) and the agent is restarted. A pair
// that the states before and after a change both deny must never connect;
// a pair both allow may be denied for a moment during an update (counted
// and reported as a window) but never during a restart, since adoption
// changes nothing.
func TestProbingThroughUpdatesAndRestart(t *testing.T) {
	seq := []probeState{stClients, stTiers, stOnlyA, stTiers, stBRelabled, stTiers}
	restartAt := len(seq) - 1 // with the tiers in force
	for range 6 {
		seq = append(seq, stSharedOld, stSharedNew)
	}
	seq = append(seq, stNone)
	runProbing(t, "100.64.80.0/24", stNone, seq, restartAt)
}

// runProbing attaches pods a, b, c and d (each serving probePort) behind
// the real agent in initial, then probes every ordered pair while the
// policy dir goes through seq, restarting the agent after seq[restartAt]
// (none if negative), and judges every probe.
func runProbing(t *testing.T, subnet string, initial probeState, seq []probeState, restartAt int) {
	for _, st := range append([]probeState{initial}, seq...) {
		if model := st.modelAllowed(); !slices.Equal(model, slices.Sorted(slices.Values(st.allowed))) {
			t.Fatalf("state %q: the truth table says %v, the model %v", st.name, st.allowed, model)
		}
	}
	e := newEnv(t, "bridge", "1.1.0", subnet)
	policies := t.TempDir()
	initial.write(t, policies)
	agent := e.startAgent(policies)
	defer func() { agent.stop(t) }()
	e.mustWait()

	names := []string{"a", "b", "c", "d"}
	pods := map[string]*harness.Pod{}
	ips := map[string]netip.Addr{}
	for _, n := range names {
		pods[n], ips[n] = e.add(n)
		pods[n].ServeTCP(t, probePort)
	}
	e.mustWait()
	// Warm up: the first packets over a fresh bridge port may be lost.
	warm := probeState{"warm-up", probeRoles, []string{"egress-all", "c-from-clients"}, nil}
	warm.write(t, policies)
	e.mustWait()
	reaches(t, pods["a"], addr(ips["c"], probePort), "x/c")
	initial.write(t, policies)
	e.mustWait()

	var pairs []string
	for _, f := range names {
		for _, to := range names {
			if f != to {
				pairs = append(pairs, f+"->"+to)
			}
		}
	}
	stop := make(chan struct{})
	stopProbes := sync.OnceFunc(func() { close(stop) })
	defer stopProbes() // also when a step fails the test
	type result struct {
		pair    string
		samples []sample
		err     error
	}
	results := make(chan result, len(pairs))
	for _, p := range pairs {
		from, to, _ := strings.Cut(p, "->")
		target := netip.AddrPortFrom(ips[to], probePort)
		go func() {
			s, err := probe(pods[from], target, stop)
			results <- result{p, s, err}
		}()
	}

	var steps []probeStep
	current := initial
	time.Sleep(settle)
	for i, next := range seq {
		step := probeStep{name: fmt.Sprintf("%d: %s -> %s", len(steps)+1, current.name, next.name), from: current, to: next, start: time.Now()}
		next.write(t, policies)
		e.mustWait()
		step.end = time.Now()
		steps = append(steps, step)
		current = next
		time.Sleep(settle)
		if i != restartAt {
			continue
		}
		// Nothing may change at any instant: not while no agent runs, nor
		// when the new one adopts the kernel state.
		step = probeStep{name: fmt.Sprintf("%d: agent restart (%s)", len(steps)+1, current.name), from: current, to: current, start: time.Now(), restart: true}
		agent.stop(t)
		time.Sleep(settle)
		agent = e.startAgent(policies)
		e.mustWait()
		step.end = time.Now()
		steps = append(steps, step)
		time.Sleep(settle)
	}
	stopProbes()

	samples := map[string][]sample{}
	for range pairs {
		r := <-results
		if r.err != nil {
			t.Fatalf("probing %s: %v", r.pair, r.err)
		}
		samples[r.pair] = r.samples
	}
	rep := judge(steps, initial, samples)
	total := 0
	for _, s := range samples {
		total += len(s)
	}
	t.Logf("%d probes over %d pairs, %d steps", total, len(pairs), len(steps))
	for _, st := range steps {
		t.Logf("step %-70s took %6v; windows (pair allowed before and after: probes denied in between): %v",
			st.name, st.end.Sub(st.start).Round(time.Millisecond), rep.windows[st.name])
	}
	for _, v := range rep.violations {
		t.Errorf("VIOLATION: %s", v)
	}
	for _, l := range rep.late {
		t.Errorf("steady state: %s", l)
	}
	for _, st := range steps {
		if !st.restart {
			continue
		}
		// A verdict that adoption really changed would deny every probe of
		// the pair for as long as it lasts (one probe per 4 ms). A single
		// denied probe has been seen once in a loaded CI run with the
		// kernel untouched (the restart wrote nothing); it is reported,
		// and three or more in a pair fail the test.
		for pair, n := range rep.windows[st.name] {
			if n >= 3 {
				t.Errorf("agent restart denied %d probes of allowed pair %s: adoption changed a verdict", n, pair)
			} else {
				t.Logf("agent restart: %d probe(s) of allowed pair %s denied (below the threshold of 3)", n, pair)
			}
		}
	}
	if t.Failed() {
		t.Logf("kernel state at the end:\n%s", strings.Join(e.kernelState(), "\n"))
	}
}

// phase is a stretch of the run: steady under one state, or a step in
// progress between two.
type phase struct {
	start, end time.Time // zero start or end: open
	states     []probeState
	step       *probeStep
}

func phases(steps []probeStep, initial probeState) []phase {
	var out []phase
	prev := phase{states: []probeState{initial}}
	for i := range steps {
		st := &steps[i]
		prev.end = st.start
		out = append(out, prev, phase{start: st.start, end: st.end, states: []probeState{st.from, st.to}, step: st})
		prev = phase{start: st.end, states: []probeState{st.to}}
	}
	return append(out, prev)
}

// judge classifies every sample by the phases its SYN may have crossed
// the node in. A connection is a violation when every state of those
// phases denies the pair; a failure where every state allows it is a
// window of the step (or, in a steady phase, a failure to enforce).
func judge(steps []probeStep, initial probeState, samples map[string][]sample) probeReport {
	rep := probeReport{windows: map[string]map[string]int{}}
	violations := map[string]int{}
	late := map[string]int{}
	all := phases(steps, initial)
	for pair, ss := range samples {
		for _, s := range ss {
			var touched []phase
			for _, ph := range all {
				if (ph.start.IsZero() || !ph.start.After(s.sentBy)) && (ph.end.IsZero() || !ph.end.Before(s.sent)) {
					touched = append(touched, ph)
				}
			}
			allowedAll, deniedAll := true, true
			var step *probeStep
			var names []string
			for _, ph := range touched {
				if ph.step != nil && step == nil {
					step = ph.step
				}
				for _, st := range ph.states {
					if slices.Contains(st.allowed, pair) {
						deniedAll = false
					} else {
						allowedAll = false
					}
					if !slices.Contains(names, st.name) {
						names = append(names, st.name)
					}
				}
			}
			switch {
			case s.ok && deniedAll && step != nil:
				violations[fmt.Sprintf("%s connected during step %s (denied before and after)", pair, step.name)]++
			case s.ok && deniedAll:
				violations[fmt.Sprintf("%s connected while %q was enforced", pair, strings.Join(names, `", "`))]++
			case !s.ok && allowedAll && step != nil:
				if rep.windows[step.name] == nil {
					rep.windows[step.name] = map[string]int{}
				}
				rep.windows[step.name][pair]++
			case !s.ok && allowedAll:
				late[fmt.Sprintf("%s denied while %q was enforced", pair, strings.Join(names, `", "`))]++
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(violations)) {
		rep.violations = append(rep.violations, fmt.Sprintf("%s: %d probes", k, violations[k]))
	}
	for _, k := range slices.Sorted(maps.Keys(late)) {
		rep.late = append(rep.late, fmt.Sprintf("%s: %d probes", k, late[k]))
	}
	return rep
}

// TestProbingThroughLabelChanges probes every pair while only pod labels
// change, the policies staying as they are: a pod moves between the
// groups the policies admit, so set memberships change under unchanged
// rules. A pair denied before and after a change never connects.
func TestProbingThroughLabelChanges(t *testing.T) {
	policies := []string{"egress-all", "c-from-clients", "d-from-servers", "a-from-clients"}
	var states []probeState
	cycle := []map[string]string{
		probeRoles,
		withRole("b", "server"),
		withRole("b", "db"),
		withRole("d", "client"),
		withRole("c", "client"),
		withRole("a", "server"),
		withRole("b", "server"),
	}
	for i, roles := range append(append(cycle, cycle...), probeRoles) {
		st := probeState{name: fmt.Sprintf("labels %d %v", i, roles), roles: roles, policies: policies}
		st.allowed = st.modelAllowed()
		states = append(states, st)
	}
	runProbing(t, "100.64.81.0/24", states[0], states[1:], -1)
}
