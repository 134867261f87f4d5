package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// fakeDataplane records applies instead of writing a kernel.
type fakeDataplane struct {
	mu       sync.Mutex
	pods     []dataplane.Pod
	applies  []*ruleset.Desired
	applyErr error
	probeErr error
	podsErr  error
	applied  chan *ruleset.Desired
}

func newFakeDataplane(pods ...dataplane.Pod) *fakeDataplane {
	return &fakeDataplane{pods: pods, applied: make(chan *ruleset.Desired, 1000)}
}

func (f *fakeDataplane) EnsureBase(context.Context) (string, error) { return "", nil }

func (f *fakeDataplane) Probe(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probeErr
}

func (f *fakeDataplane) Pods(context.Context) ([]dataplane.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pods), f.podsErr
}

func (f *fakeDataplane) Apply(_ context.Context, t dataplane.Target) (dataplane.ApplyStats, error) {
	d := t.Policy
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.applyErr != nil {
		return dataplane.ApplyStats{}, f.applyErr
	}
	f.applies = append(f.applies, d)
	f.applied <- d
	return dataplane.ApplyStats{ChainsWritten: len(d.Chains)}, nil
}

func (f *fakeDataplane) setApplyErr(err error) {
	f.mu.Lock()
	f.applyErr = err
	f.mu.Unlock()
}

func (f *fakeDataplane) last() *ruleset.Desired {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applies) == 0 {
		return nil
	}
	return f.applies[len(f.applies)-1]
}

func (f *fakeDataplane) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.applies)
}

// fakeSource is a Source whose objects the test sets. It does not know
// what changed when they are set (nor at the first Snapshot): nothing
// else, as far as it knows.
type fakeSource struct {
	mu      sync.Mutex
	objs    source.Objects
	changed changes.Set
	err     error
	changes chan struct{}
	resyncs int
}

func newFakeSource(objs source.Objects) *fakeSource {
	return &fakeSource{objs: objs, changes: make(chan struct{}, 1)}
}

func (s *fakeSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *fakeSource) Changes() <-chan struct{}      { return s.changes }

func (s *fakeSource) Snapshot() (source.Objects, changes.Set, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.changed
	s.changed = changes.None()
	return s.objs, ch, s.err
}

func (s *fakeSource) Resync(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resyncs++
	return s.err
}

func (s *fakeSource) set(objs source.Objects) {
	s.mu.Lock()
	s.objs = objs
	s.changed = changes.Rebuild()
	s.mu.Unlock()
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, src source.Source, dp Dataplane, mode policy.Mode) *Agent {
	t.Helper()
	a, err := New(Config{Source: src, Dataplane: dp, Mode: mode, Log: testLog(t), RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func pod(ns, name string, lbls map[string]string, ips ...string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

// allowFrom lets pods labelled from=<peer> into pods labelled app=<app>.
func allowFrom(ns, name, app, peer string) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": peer}}}},
			}},
		},
	}
}

// allows reports whether a chain lets anything through.
func allows(c *ruleset.Chain) bool {
	if c == nil {
		return false
	}
	for _, r := range c.Rules {
		if slices.Contains([]string(r), policy.TargetAllow) {
			return true
		}
	}
	return false
}

func ingressChain(t *testing.T, d *ruleset.Desired, key string) *ruleset.Chain {
	t.Helper()
	in, _, err := policy.ChainNames(key)
	if err != nil {
		t.Fatal(err)
	}
	return d.Chain(ruleset.IPv4, in)
}

func localPod(d *ruleset.Desired, key string) *ruleset.LocalPod {
	if d == nil {
		return nil
	}
	for i := range d.Pods {
		if d.Pods[i].Key == key {
			return &d.Pods[i]
		}
	}
	return nil
}

var errKernel = errors.New("iptables-restore: exit status 1")
