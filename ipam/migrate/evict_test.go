package migrate_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/podwall/podwall/ipam/migrate"
	"github.com/podwall/podwall/ipam/migrate/migratetest"
	"github.com/podwall/podwall/ipam/report"
)

var testDraining = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}

// evicted is one run of the evictor over node-a's pods in the draining
// range: the results by pod, and the progress it printed.
type evicted struct {
	results  map[string]migrate.Result
	progress string
}

func evict(t *testing.T, client *fake.Clientset, o migrate.Options, force bool) evicted {
	t.Helper()
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 1
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	o.FirstBackoff, o.PollInterval = 5*time.Millisecond, 2*time.Millisecond
	var progress bytes.Buffer
	o.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := migrate.NodePods(ctx, client, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	results := migrate.NewEvictor(client, o).Run(ctx, report.PodsToMigrate(testDraining, pods), force)
	out := evicted{results: map[string]migrate.Result{}, progress: progress.String()}
	for _, r := range results {
		out.results[r.Pod.Namespace+"/"+r.Pod.Name] = r
	}
	return out
}

func (e evicted) outcome(t *testing.T, pod string, want migrate.Outcome, errFrags ...string) {
	t.Helper()
	r, ok := e.results[pod]
	if !ok {
		t.Errorf("%s: no result; progress:\n%s", pod, e.progress)
		return
	}
	if r.Outcome != want {
		t.Errorf("%s: %s (%v), want %s", pod, r.Outcome, r.Err, want)
	}
	for _, f := range errFrags {
		if r.Err == nil || !strings.Contains(r.Err.Error(), f) {
			t.Errorf("%s: error %v lacks %q", pod, r.Err, f)
		}
	}
}

// TestEvictInOrder: every candidate evicted in order, never more going at
// once than MaxInFlight, others untouched.
func TestEvictInOrder(t *testing.T) {
	for _, maxInFlight := range []int{1, 3} {
		var pods []*corev1.Pod
		for i, n := range []string{"e", "c", "a", "d", "b", "f"} {
			pods = append(pods, migratetest.Pod("node-a", "web", n, fmt.Sprintf("10.244.1.%d", 10+i)))
		}
		pods = append(pods, migratetest.Pod("node-a", "web", "new", "100.64.1.5"), migratetest.Pod("node-b", "web", "far", "10.244.1.20"))
		client := migratetest.Cluster(pods...)
		k := migratetest.NewKubelet(t, client)
		e := evict(t, client, migrate.Options{MaxInFlight: maxInFlight}, false)
		want := []string{"web/a", "web/b", "web/c", "web/d", "web/e", "web/f"}
		got := k.Evictions()
		if maxInFlight == 1 && !slices.Equal(got, want) {
			t.Errorf("max 1: evictions %q, want %q", got, want)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("max %d: evictions %q, want %q", maxInFlight, got, want)
		}
		if k.MaxGoing() > maxInFlight {
			t.Errorf("max %d: %d pods going at once", maxInFlight, k.MaxGoing())
		}
		if len(e.results) != len(want) {
			t.Errorf("max %d: results %v", maxInFlight, e.results)
		}
		for _, pod := range want {
			e.outcome(t, pod, migrate.OutcomeGone)
		}
		for _, name := range []string{"new", "far"} {
			if _, err := client.Tracker().Get(migratetest.PodsResource, "web", name); err != nil {
				t.Errorf("max %d: pod web/%s touched: %v", maxInFlight, name, err)
			}
		}
	}
}

// TestEvictDisruptionBudget: a 429 is retried with backoff and the others
// proceed meanwhile; a budget that never allows is reported after the
// timeout.
func TestEvictDisruptionBudget(t *testing.T) {
	client := migratetest.Cluster(migratetest.Pod("node-a", "web", "a", "10.244.1.5"), migratetest.Pod("node-a", "web", "b", "10.244.1.6"), migratetest.Pod("node-a", "db", "z", "10.244.1.7"))
	k := migratetest.NewKubelet(t, client)
	k.Refuse["web/a"] = 3
	k.Refuse["db/z"] = -1 // never
	e := evict(t, client, migrate.Options{Timeout: 500 * time.Millisecond}, false)
	// web/a, refused first, is retried while web/b goes ahead.
	if got := k.Evictions(); !slices.Equal(got, []string{"web/b", "web/a"}) {
		t.Errorf("evictions %q, want web/b ahead of the refused web/a", got)
	}
	e.outcome(t, "web/a", migrate.OutcomeGone)
	e.outcome(t, "web/b", migrate.OutcomeGone)
	e.outcome(t, "db/z", migrate.OutcomeFailed, "eviction refused", "disruption budget")
	if !strings.Contains(e.progress, "db/z: eviction refused") {
		t.Errorf("progress:\n%s", e.progress)
	}
	if _, err := client.Tracker().Get(migratetest.PodsResource, "db", "z"); err != nil {
		t.Errorf("db/z: %v", err)
	}
}

// TestEvictUnmanaged: pods no controller recreates are evicted only with
// force; mirror pods never; a pod that stays after its eviction fails at
// the timeout.
func TestEvictUnmanaged(t *testing.T) {
	bare := migratetest.Pod("node-a", "default", "bare", "10.244.1.9")
	bare.OwnerReferences = nil
	mirror := migratetest.Pod("node-a", "kube-system", "static", "10.244.1.10")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
	client := migratetest.Cluster(bare, mirror, migratetest.Pod("node-a", "web", "stuck", "10.244.1.11"))
	k := migratetest.NewKubelet(t, client)
	k.Keep["web/stuck"] = true
	e := evict(t, client, migrate.Options{Timeout: 200 * time.Millisecond}, false)
	if !slices.Equal(k.Evictions(), []string{"web/stuck"}) {
		t.Fatalf("without force: evictions %q, progress %s", k.Evictions(), e.progress)
	}
	e.outcome(t, "default/bare", migrate.OutcomeFailed, "no controller recreates it: not evicted without --force")
	e.outcome(t, "kube-system/static", migrate.OutcomeFailed, "mirror of a static pod")
	e.outcome(t, "web/stuck", migrate.OutcomeFailed, "evicted but still there after")
	e = evict(t, client, migrate.Options{Timeout: 200 * time.Millisecond}, true)
	if !slices.Contains(k.Evictions(), "default/bare") || slices.Contains(k.Evictions(), "kube-system/static") {
		t.Fatalf("with force: evictions %q, progress %s", k.Evictions(), e.progress)
	}
	e.outcome(t, "kube-system/static", migrate.OutcomeFailed, "mirror of a static pod")
}

// TestEvictReplaced: a pod replaced by one of the same name (a new UID)
// counts as moved.
func TestEvictReplaced(t *testing.T) {
	client := migratetest.Cluster(migratetest.Pod("node-a", "db", "db-0", "10.244.1.5"))
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		repl := migratetest.Pod("node-a", "db", "db-0", "100.64.1.9")
		repl.UID = "new"
		return true, nil, client.Tracker().Update(migratetest.PodsResource, repl, "db")
	})
	e := evict(t, client, migrate.Options{}, false)
	e.outcome(t, "db/db-0", migrate.OutcomeReplaced)
	if !strings.Contains(e.progress, "db/db-0: replaced after") {
		t.Errorf("progress:\n%s", e.progress)
	}
}

// TestEvictionError: an error other than a refusal is not retried.
func TestEvictionError(t *testing.T) {
	client := migratetest.Cluster(migratetest.Pod("node-a", "web", "a", "10.244.1.5"))
	calls := 0
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods/eviction"}, "a", nil)
	})
	e := evict(t, client, migrate.Options{}, false)
	if calls != 1 {
		t.Errorf("%d calls, want 1", calls)
	}
	e.outcome(t, "web/a", migrate.OutcomeFailed, "eviction failed", "forbidden")
}

// TestEvictTerminating: a pod already terminating is not evicted again,
// only awaited.
func TestEvictTerminating(t *testing.T) {
	going := migratetest.Pod("node-a", "web", "going", "10.244.1.5")
	going.OwnerReferences = nil // terminating: no force needed
	going.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	client := migratetest.Cluster(going)
	k := migratetest.NewKubelet(t, client)
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = client.Tracker().Delete(migratetest.PodsResource, "web", "going")
	}()
	e := evict(t, client, migrate.Options{}, false)
	e.outcome(t, "web/going", migrate.OutcomeGone)
	if len(k.Evictions()) != 0 || !strings.Contains(e.progress, "web/going: already terminating") || !strings.Contains(e.progress, "web/going: gone after") {
		t.Fatalf("evictions %q, progress %s", k.Evictions(), e.progress)
	}
}

// TestEvictionRefusalsToCaller: client-go would retry a 429 carrying
// Retry-After inside one call; the header is dropped for evictions only.
func TestEvictionRefusalsToCaller(t *testing.T) {
	next := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"10"}}, Request: req}, nil
	})
	for _, tc := range []struct {
		method, path string
		kept         bool
	}{
		{http.MethodPost, "/api/v1/namespaces/x/pods/a/eviction", false},
		{http.MethodPost, "/api/v1/namespaces/x/pods", true},
		{http.MethodGet, "/api/v1/namespaces/x/pods/a", true},
	} {
		req, err := http.NewRequest(tc.method, "https://api.example"+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := migrate.EvictionRefusalsToCaller(next).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if kept := resp.Header.Get("Retry-After") != ""; kept != tc.kept {
			t.Errorf("%s %s: Retry-After kept %v, want %v", tc.method, tc.path, kept, tc.kept)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
