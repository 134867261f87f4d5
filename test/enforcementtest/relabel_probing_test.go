package enforcementtest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/harness"
)

// Timings of TestProbingUDPAndTCPThroughRelabels. Every ordered pair of
// the nine pods sends a TCP and a UDP probe every relabelProbeEvery (port
// 80 and 81 in turn); each is judged by whether its handshake completes or
// its datagram is echoed within relabelProbeAnswer.
const (
	relabelProbeEvery  = 20 * time.Millisecond
	relabelProbeAnswer = 900 * time.Millisecond // under the 1 s SYN retransmission
	// The agent's periodic work, shortened so that a run of seconds
	// crosses several of each: the attachments' read-back, the base
	// check, and the dataplane's full read of the kernel.
	relabelKernelRefresh = time.Second
	relabelBaseCheck     = 300 * time.Millisecond
	relabelMaxStateAge   = 700 * time.Millisecond
	// How long the pods talk freely before the policies come, and how
	// long the relabels go on after.
	relabelOpenPhase = 3 * time.Second
	relabelDuration  = 14 * time.Second
	relabelPause     = 250 * time.Millisecond
	// A pair the policy allows may fail for a moment on a loaded machine
	// (the prober preempted past relabelProbeAnswer); failing for longer
	// than this is a failure to enforce.
	relabelAllowedGap = 1500 * time.Millisecond
)

// relabelTarget is what one probe tries.
type relabelTarget struct {
	udp  bool
	port int
}

func (tg relabelTarget) proto() string {
	if tg.udp {
		return "udp"
	}
	return "tcp"
}

func (tg relabelTarget) String() string {
	if tg.udp {
		return fmt.Sprintf("UDP/%d", tg.port)
	}
	return fmt.Sprintf("TCP/%d", tg.port)
}

// relabelSample is one probe: when it was sent (between sent and sentBy),
// its source port, and whether it got through.
type relabelSample struct {
	target       relabelTarget
	sent, sentBy time.Time
	sport        int
	ok           bool
}

// relabelVerdict is the verdict of a state of the cluster: whether the
// probe from src to dst ("ns/pod") gets through.
type relabelVerdict func(src, dst string, tg relabelTarget) bool

// openVerdict: no policy, kubernetes mode: everything passes.
func openVerdict(string, string, relabelTarget) bool { return true }

// isolatedVerdict is the verdict under the policies of the finding: y/p1
// lets TCP 80-82 into every pod of y from anywhere, x/p2 denies all
// ingress into x, z is unselected (open).
func isolatedVerdict(_, dst string, tg relabelTarget) bool {
	switch strings.SplitN(dst, "/", 2)[0] {
	case "x":
		return false
	case "y":
		return !tg.udp
	}
	return true
}

const relabelPolicies = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: "y"}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{ports: [{protocol: TCP, port: 80, endPort: 82}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2, namespace: "x"}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

// relabelCluster writes the namespaces and pods of the cyclonus cluster
// with the given extra labels ("x" for a namespace, "x/c" for a pod).
func relabelCluster(t *testing.T, dir string, extra map[string]map[string]string) {
	t.Helper()
	var b strings.Builder
	render := func(base map[string]string, more map[string]string) string {
		l := maps.Clone(base)
		maps.Copy(l, more)
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(l)) {
			parts = append(parts, fmt.Sprintf("%s: %q", k, l[k])) // quoted: a bare y is a YAML 1.1 boolean
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	for _, ns := range cyclonus.Namespaces {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %q, labels: %s}\n", ns, render(map[string]string{"ns": ns}, extra[ns]))
		for _, name := range cyclonus.PodNames {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %q, namespace: %q, labels: %s}\n", name, ns,
				render(map[string]string{"pod": name}, extra[ns+"/"+name]))
		}
	}
	writePolicyFile(t, dir, "cluster.yaml", b.String())
}

// TestProbingUDPAndTCPThroughRelabels replays the finding of issue 9 on
// the standalone agent in kubernetes mode: the nine cyclonus pods (x, y, z
// × a, b, c, serving TCP and UDP on 80 and 81) talk freely for a while
// (no policy: all open), then y/p1 (TCP 80-82 into y from anywhere) and
// x/p2 (ingress deny-all for x) isolate x and y, and namespaces and pods
// are relabelled over and over in ways that change no verdict, while the
// agent's read-back, base check and full kernel reads run every second or
// less. Every ordered pair probes TCP and UDP every 20 ms throughout. A
// probe of a pair the policies deny must never get through, whatever
// flows the pair had before the policies came (a UDP probe whose source
// port an earlier, allowed, probe used meets that flow's conntrack entry).
func TestProbingUDPAndTCPThroughRelabels(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.82.0/24")
	policies := t.TempDir()
	relabelCluster(t, policies, nil)
	cmd := exec.Command(harness.PluginPath(t, "podwall-agent"), "--policy-dir", policies,
		"--socket", e.node.Dir+"/agent.sock", "--default-policy", "kubernetes", "--log-level", "debug",
		"--kernel-refresh-interval", relabelKernelRefresh.String(), "--base-check-interval", relabelBaseCheck.String(),
		"--max-state-age", relabelMaxStateAge.String())
	agentLog := &lineLog{}
	cmd.Stderr = agentLog
	if err := e.node.Start(cmd); err != nil {
		t.Fatal(err)
	}
	agent := &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() { agent.done <- cmd.Wait() }()
	defer agent.stop(t)
	e.mustWait()

	pods := map[string]*harness.Pod{}
	ips := map[string]netip.Addr{}
	var refs []string
	for _, ns := range cyclonus.Namespaces {
		for _, name := range cyclonus.PodNames {
			ref := ns + "/" + name
			pod := e.node.NewPod(t, ns, name)
			res, err := e.nw.Add(ctxFor(t, time.Minute), pod)
			if err != nil {
				t.Fatalf("ADD %s: %v", ref, err)
			}
			stop, err := cyclonus.Serve(pod)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			pods[ref], ips[ref] = pod, firstV4(t, res)
			refs = append(refs, ref)
		}
	}
	e.mustWait()
	// Warm up: the first packets over a fresh bridge port may be lost.
	for _, ref := range refs[1:] {
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if _, err = cyclonus.Connect(pods[refs[0]], ips[ref], 80, corev1.ProtocolTCP, time.Second); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("%s cannot reach %s with no policy: %v\nkernel state:\n%s", refs[0], ref, err, strings.Join(e.kernelState(), "\n"))
		}
	}

	var pairs [][2]string
	for _, src := range refs {
		for _, dst := range refs {
			if src != dst {
				pairs = append(pairs, [2]string{src, dst})
			}
		}
	}
	// isolatedAt is set once the policies are enforced: a probe sent after
	// it that the policies deny and that gets through is a wrong allow,
	// shown with the node's conntrack entry for it as soon as it is seen
	// (with the time the kernel created the entry).
	if err := e.node.Sysctl("net.netfilter.nf_conntrack_timestamp", "1"); err != nil {
		t.Fatal(err)
	}
	var isolatedAt atomic.Int64
	wrong := make(chan string, 16)
	stop := make(chan struct{})
	stopProbes := sync.OnceFunc(func() { close(stop) })
	defer stopProbes()
	type result struct {
		pair    [2]string
		samples []relabelSample
		err     error
	}
	results := make(chan result, len(pairs))
	for _, p := range pairs {
		go func() {
			s, err := relabelProbe(pods[p[0]], ips[p[1]], stop, func(s relabelSample) {
				if at := isolatedAt.Load(); at != 0 && s.sent.UnixNano() > at && !isolatedVerdict(p[0], p[1], s.target) {
					select {
					case wrong <- fmt.Sprintf("-p %s -s %s -d %s --sport %d --dport %d", s.target.proto(), ips[p[0]], ips[p[1]], s.sport, s.target.port):
					default:
					}
				}
			})
			results <- result{p, s, err}
		}()
	}
	var conntrackDumps []string
	dumpsDone := make(chan struct{})
	go func() {
		defer close(dumpsDone)
		for tuple := range wrong {
			if len(conntrackDumps) >= 6 {
				continue
			}
			out, err := e.node.Run(append([]string{"conntrack", "-L", "-o", "ktimestamp"}, strings.Fields(tuple)...)...)
			conntrackDumps = append(conntrackDumps, fmt.Sprintf("conntrack -L %s at %s: %s%v", tuple, time.Now().Format("15:04:05.000"), out, err))
		}
	}()

	var steps []relabelStep
	step := func(name string, from, to relabelVerdict, change func()) {
		st := relabelStep{name: name, from: from, to: to, start: time.Now()}
		change()
		e.mustWait()
		st.end = time.Now()
		steps = append(steps, st)
	}
	runStart := time.Now()
	time.Sleep(relabelOpenPhase)
	step("policies y/p1 and x/p2", openVerdict, isolatedVerdict, func() { writePolicyFile(t, policies, "policies.yaml", relabelPolicies) })
	isolatedAt.Store(steps[0].end.UnixNano())
	t.Logf("all open from %s; policies written at %s, enforced (wait returned) at %s", runStart.Format("15:04:05.000"),
		steps[0].start.Format("15:04:05.000"), steps[0].end.Format("15:04:05.000"))
	// Relabels that change no verdict: the policies select every pod of
	// their namespace and admit any source.
	relabels := []map[string]map[string]string{
		{"x": {"relabel": "one"}},
		{"x": {"relabel": "one"}, "x/c": {"relabel": "c"}},
		{"x": {"relabel": "one"}},
		{"y": {"relabel": "two"}, "x/c": {"other": "c"}},
		{"z": {"relabel": "three"}, "y/b": {"relabel": "b"}, "z/b": {"relabel": "b"}},
		nil,
	}
	for i := 0; time.Since(steps[0].end) < relabelDuration; i++ {
		labels := relabels[i%len(relabels)]
		step(fmt.Sprintf("relabel %d %v", i+1, labels), isolatedVerdict, isolatedVerdict, func() { relabelCluster(t, policies, labels) })
		time.Sleep(relabelPause)
	}
	time.Sleep(relabelProbeAnswer)
	stopProbes()

	samples := map[[2]string][]relabelSample{}
	for range pairs {
		r := <-results
		if r.err != nil {
			t.Fatalf("probing %s -> %s: %v", r.pair[0], r.pair[1], r.err)
		}
		samples[r.pair] = r.samples
	}
	close(wrong)
	<-dumpsDone

	rep := judgeRelabels(steps, samples)
	t.Logf("%d probes (%d UDP) over %d pairs in %v, %d steps (policies after %v of all open, then %d relabels); "+
		"agent: read-back every %v, base check every %v, kernel read after %v",
		rep.probes, rep.udp, len(pairs), time.Since(runStart).Round(time.Millisecond), len(steps), relabelOpenPhase,
		len(steps)-1, relabelKernelRefresh, relabelBaseCheck, relabelMaxStateAge)
	t.Logf("longest run of failed probes of an allowed pair: %v (%s)", rep.longestGap.Round(time.Millisecond), rep.longestGapOf)
	t.Logf("wrong allows: %d (TCP %d, UDP %d), %d of them on a flow (pair, port, source port) a probe used before the policies were enforced",
		rep.wrongTCP+rep.wrongUDP, rep.wrongTCP, rep.wrongUDP, rep.wrongOpenFlow)
	for _, w := range rep.wrong {
		t.Errorf("WRONG ALLOW: %s", w)
	}
	for _, d := range conntrackDumps {
		t.Logf("%s", d)
	}
	if rep.longestGap > relabelAllowedGap {
		t.Errorf("an allowed pair failed for %v (%s): more than %v", rep.longestGap.Round(time.Millisecond), rep.longestGapOf, relabelAllowedGap)
	}
	if t.Failed() {
		t.Logf("agent log (restores and applies):\n%s", agentLog.String())
		t.Logf("kernel state at the end:\n%s", strings.Join(e.kernelState(), "\n"))
	}
}

// lineLog keeps the agent's log for the report of a failed run.
type lineLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// relabelProbe sends, from inside the pod, a TCP connection attempt and a
// UDP datagram to dst every relabelProbeEvery (port 80, then 81, and so
// on), until stop is closed, and judges each: a completed handshake from
// the first SYN or a refusal, an echo or a refusal, within
// relabelProbeAnswer. seen is called with every sample that got through,
// as it is judged.
func relabelProbe(from *harness.Pod, dst netip.Addr, stop <-chan struct{}, seen func(relabelSample)) ([]relabelSample, error) {
	var samples []relabelSample
	err := from.Do(func() error {
		var pending []relabelAttempt
		defer func() {
			for _, a := range pending {
				syscall.Close(a.fd)
			}
		}()
		finish := func(a relabelAttempt, ok bool) {
			a.ok = ok
			samples = append(samples, a.relabelSample)
			if ok {
				seen(a.relabelSample)
			}
			syscall.Close(a.fd)
		}
		buf := make([]byte, 64)
		tick := time.NewTicker(relabelProbeEvery)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return nil // attempts still pending are not judged
			case <-tick.C:
			}
			port := 80 + n%2
			for _, udp := range []bool{false, true} {
				a, err := relabelSend(dst, relabelTarget{udp: udp, port: port})
				if err != nil {
					return err
				}
				pending = append(pending, a)
			}
			now := time.Now()
			keep := pending[:0]
			for _, a := range pending {
				if a.target.udp {
					nr, _, err := syscall.Recvfrom(a.fd, buf, 0)
					switch {
					case err == nil && nr > 0:
						finish(a, true)
						continue
					case errors.Is(err, syscall.ECONNREFUSED):
						finish(a, true) // the datagram reached the pod
						continue
					}
				} else {
					if _, err := syscall.Getpeername(a.fd); err == nil {
						// Connected, but maybe by a retransmitted SYN (a
						// prober checking late): only the first is judged.
						info, err := tcpInfo(a.fd)
						finish(a, err == nil && info.Total_retrans == 0 && info.Retransmits == 0)
						continue
					}
					if soErr, _ := syscall.GetsockoptInt(a.fd, syscall.SOL_SOCKET, syscall.SO_ERROR); soErr != 0 {
						finish(a, syscall.Errno(soErr) == syscall.ECONNREFUSED)
						continue
					}
				}
				if now.Sub(a.sent) > relabelProbeAnswer {
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

// relabelAttempt is a probe waiting for its verdict.
type relabelAttempt struct {
	fd int
	relabelSample
}

// relabelSend opens a non-blocking socket to dst and sends the probe: a
// SYN, or one datagram.
func relabelSend(dst netip.Addr, tg relabelTarget) (a relabelAttempt, err error) {
	typ := syscall.SOCK_STREAM
	if tg.udp {
		typ = syscall.SOCK_DGRAM
	}
	fd, err := syscall.Socket(syscall.AF_INET, typ|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return a, fmt.Errorf("socket: %w", err)
	}
	sa := &syscall.SockaddrInet4{Port: tg.port, Addr: dst.As4()}
	if !tg.udp {
		// Reset on close: no TIME_WAIT piling up.
		_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	}
	a.fd, a.target, a.sent = fd, tg, time.Now()
	if err := syscall.Connect(fd, sa); err != nil && !errors.Is(err, syscall.EINPROGRESS) {
		syscall.Close(fd)
		return a, fmt.Errorf("connect to %s %v: %w", dst, tg, err)
	}
	if tg.udp {
		if err := syscall.Sendto(fd, []byte("podwall probe"), 0, nil); err != nil {
			syscall.Close(fd)
			return a, fmt.Errorf("send to %s %v: %w", dst, tg, err)
		}
	}
	a.sentBy = time.Now()
	if local, err := syscall.Getsockname(fd); err == nil {
		if in4, ok := local.(*syscall.SockaddrInet4); ok {
			a.sport = in4.Port
		}
	}
	return a, nil
}

// relabelStep is one change: from one state to another, between start
// (the manifests written) and end (podwallctl wait returned).
type relabelStep struct {
	name       string
	from, to   relabelVerdict
	start, end time.Time
}

type relabelReport struct {
	probes, udp int
	wrong       []string
	// Wrong allows: by protocol, and those whose flow (pair, port,
	// source port) had a probe that got through before the policies were
	// enforced.
	wrongTCP, wrongUDP, wrongOpenFlow int

	longestGap   time.Duration
	longestGapOf string
}

// judgeRelabels judges every sample by the states its probe may have met:
// those of the steps in progress while it was sent, or the state between
// two steps. A probe that got through where every such state denies it is
// a wrong allow, reported with the earlier allowed probe of the same
// flow (same pair, port and source port) it may have ridden on: the first
// one, and whether it was sent before the policies (steps[0]) came. A run
// of failed probes where every state allows them is measured.
func judgeRelabels(steps []relabelStep, samples map[[2]string][]relabelSample) relabelReport {
	var rep relabelReport
	statesAt := func(s relabelSample) []relabelVerdict {
		var out []relabelVerdict
		prev := relabelVerdict(openVerdict)
		for _, st := range steps {
			if s.sentBy.Before(st.start) {
				return append(out, prev)
			}
			if !s.sent.After(st.end) {
				out = append(out, st.from, st.to)
			}
			prev = st.to
		}
		return append(out, prev)
	}
	wrong := map[string]int{}
	for pair, ss := range samples {
		failedSince := map[relabelTarget]time.Time{}
		// "UDP/80 sport" -> the first and the last probe of that flow that
		// got through.
		firstAllowed, lastAllowed := map[string]relabelSample{}, map[string]relabelSample{}
		for _, s := range ss {
			rep.probes++
			if s.target.udp {
				rep.udp++
			}
			allowedAll, deniedAll := true, true
			for _, v := range statesAt(s) {
				if v(pair[0], pair[1], s.target) {
					deniedAll = false
				} else {
					allowedAll = false
				}
			}
			flow := fmt.Sprintf("%v %d", s.target, s.sport)
			switch {
			case s.ok && deniedAll:
				if s.target.udp {
					rep.wrongUDP++
				} else {
					rep.wrongTCP++
				}
				why := "no earlier allowed probe of that flow"
				if prev, ok := lastAllowed[flow]; ok {
					first := firstAllowed[flow]
					phase := "after the policies were enforced"
					switch {
					case len(steps) == 0:
					case first.sentBy.Before(steps[0].start):
						phase = "in the open phase, before the policies"
						rep.wrongOpenFlow++
					case !first.sent.After(steps[0].end):
						phase = "while the policies were being applied (still open)"
						rep.wrongOpenFlow++
					}
					why = fmt.Sprintf("allowed probes from the same source port earlier: the last %v before, the first %v before, sent %s at %s",
						s.sent.Sub(prev.sent).Round(time.Millisecond), s.sent.Sub(first.sent).Round(time.Millisecond),
						phase, first.sent.Format("15:04:05.000"))
				}
				wrong[fmt.Sprintf("%s -> %s %v from port %d (%s)", pair[0], pair[1], s.target, s.sport, why)]++
			case !s.ok && allowedAll:
				if _, ok := failedSince[s.target]; !ok {
					failedSince[s.target] = s.sent
				}
				if gap := s.sentBy.Sub(failedSince[s.target]); gap > rep.longestGap {
					rep.longestGap = gap
					rep.longestGapOf = fmt.Sprintf("%s -> %s %v from %s", pair[0], pair[1], s.target, failedSince[s.target].Format("15:04:05.000"))
				}
			case s.ok:
				delete(failedSince, s.target)
			}
			if s.ok {
				if _, ok := firstAllowed[flow]; !ok {
					firstAllowed[flow] = s
				}
				lastAllowed[flow] = s
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(wrong)) {
		rep.wrong = append(rep.wrong, fmt.Sprintf("%s: %d probes", k, wrong[k]))
	}
	return rep
}
