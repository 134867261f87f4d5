package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// latencies summarises one plugin's run.
type latencies struct {
	add, del []time.Duration
	wall     time.Duration
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// BenchmarkIPAMConcurrentAddDel runs ADD then DEL for 500 containers at once
// through podwall-ipam and through host-local, invoked as a main plugin
// delegates to its IPAM plugin, inside one node namespace; then 100
// sequential ADDs of each for the single-ADD latency.
func BenchmarkIPAMConcurrentAddDel(b *testing.B) {
	node := harness.NewNode(b)
	pod := node.NewPod(b, "default", "netns-holder") // IPAM plugins never enter it
	plugins := []struct{ name, ipam string }{
		{"host-local", fmt.Sprintf(`{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"100.64.32.0/22"}]]}`, node.Dir+"/host-local")},
		{"podwall-ipam", fmt.Sprintf(`{"type":"podwall-ipam","dataDir":%q,"ranges":[{"subnet":"100.64.36.0/22"}]}`, node.Dir+"/podwall")},
	}
	const containers, sequential = 500, 100
	for i := 0; i < b.N; i++ {
		results := map[string]latencies{}
		single := map[string][]time.Duration{}
		// Alternate the order so neither plugin always runs on a warmer machine.
		order := plugins
		if i%2 == 1 {
			order = []struct{ name, ipam string }{plugins[1], plugins[0]}
		}
		for _, p := range order {
			stdin := harness.IPAMStdin("benchnet", "1.1.0", []byte(p.ipam))
			results[p.name] = concurrentAddDel(b, node, pod, p.name, stdin, containers)
			single[p.name] = sequentialAdds(b, node, pod, p.name, stdin, sequential)
		}
		// The floor: the same number of executions doing nothing but
		// answering VERSION. No IPAM plugin can be faster than this here.
		floor := concurrentVersion(b, node, pod, containers)
		hl, pw := results["host-local"], results["podwall-ipam"]
		b.Logf("\n%d concurrent ADD+DEL, each plugin executed per operation:\n"+
			"%-14s %10s %10s %10s %10s %10s\n"+
			"%-14s %10v %10v %10v %10v %10v\n"+
			"%-14s %10v %10v %10v %10v %10v\n"+
			"%-14s %10v %10v %10v %10v %10v\n"+
			"single ADD p50 (%d sequential): host-local %v, podwall-ipam %v",
			containers,
			"plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "wall",
			"host-local", r(percentile(hl.add, .5)), r(percentile(hl.add, .99)), r(percentile(hl.del, .5)), r(percentile(hl.del, .99)), r(hl.wall),
			"podwall-ipam", r(percentile(pw.add, .5)), r(percentile(pw.add, .99)), r(percentile(pw.del, .5)), r(percentile(pw.del, .99)), r(pw.wall),
			"exec floor", r(percentile(floor.add, .5)), r(percentile(floor.add, .99)), r(percentile(floor.del, .5)), r(percentile(floor.del, .99)), r(floor.wall),
			sequential, r(percentile(single["host-local"], .5)), r(percentile(single["podwall-ipam"], .5)))
		ratio := func(a, base time.Duration) float64 { return float64(a) / float64(base) }
		b.ReportMetric(ratio(percentile(pw.add, .99), percentile(hl.add, .99)), "p99-ADD-ratio(target<=0.25)")
		b.ReportMetric(ratio(percentile(pw.add, .5), percentile(hl.add, .5)), "p50-ADD-ratio")
		b.ReportMetric(ratio(pw.wall, hl.wall), "wall-ratio")
		b.ReportMetric(ratio(percentile(floor.add, .99), percentile(hl.add, .99)), "floor-p99-ratio")
		b.ReportMetric(ratio(percentile(single["podwall-ipam"], .5), percentile(single["host-local"], .5)), "single-ADD-p50-ratio(target<=1)")
	}
}

func r(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }

// concurrentAddDel runs, for n containers at once, ADD then DEL of plugin.
func concurrentAddDel(b *testing.B, node *harness.Node, pod *harness.Pod, plugin string, stdin []byte, n int) latencies {
	b.Helper()
	return concurrentPairs(b, node, pod, plugin, "ADD", "DEL", stdin, n)
}

// concurrentVersion runs the same pattern with VERSION commands of
// podwall-ipam: the cost of executing a plugin at all.
func concurrentVersion(b *testing.B, node *harness.Node, pod *harness.Pod, n int) latencies {
	b.Helper()
	return concurrentPairs(b, node, pod, "podwall-ipam", "VERSION", "VERSION", []byte(`{"cniVersion":"1.1.0"}`), n)
}

// concurrentPairs runs first then second for n containers at once, timing
// each execution, and the whole.
func concurrentPairs(b *testing.B, node *harness.Node, pod *harness.Pod, plugin, first, second string, stdin []byte, n int) latencies {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l := latencies{add: make([]time.Duration, n), del: make([]time.Duration, n)}
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("bench-%s-%d", plugin, i)
			var err error
			l.add[i], err = run(ctx, node, pod, plugin, first, id, stdin)
			if err == nil {
				l.del[i], err = run(ctx, node, pod, plugin, second, id, stdin)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	l.wall = time.Since(start)
	for _, err := range errs {
		if err != nil {
			b.Fatalf("%s: %v", plugin, err)
		}
	}
	return l
}

func sequentialAdds(b *testing.B, node *harness.Node, pod *harness.Pod, plugin string, stdin []byte, n int) []time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out []time.Duration
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("seq-%s-%d", plugin, i)
		d, err := run(ctx, node, pod, plugin, "ADD", id, stdin)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, d)
	}
	for i := 0; i < n; i++ {
		if _, err := run(ctx, node, pod, plugin, "DEL", fmt.Sprintf("seq-%s-%d", plugin, i), stdin); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// run executes one plugin operation as container id and times it from
// process start to exit, the latency a runtime sees.
func run(ctx context.Context, node *harness.Node, pod *harness.Pod, plugin, command, id string, stdin []byte) (time.Duration, error) {
	cmd, err := node.PluginCommand(ctx, plugin, command, pod, stdin)
	if err != nil {
		return 0, err
	}
	for i, kv := range cmd.Env {
		if len(kv) > 16 && kv[:16] == "CNI_CONTAINERID=" {
			cmd.Env[i] = "CNI_CONTAINERID=" + id
		}
	}
	var out safeBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	if err := node.Start(cmd); err != nil {
		return 0, err
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("%s %s %s: %v: %s", plugin, command, id, err, out.Bytes())
	}
	return time.Since(start), nil
}

type safeBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	return len(p), nil
}

func (s *safeBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.buf...)
}
