package agent

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// fetchingSource is a fakeSource that can look pods up: it learns the pod
// only when asked, as Kube does for a pod its informer has not seen.
type fetchingSource struct {
	*fakeSource
	mu      sync.Mutex
	fetched []ruleset.Ref
	known   source.Objects
}

func (s *fetchingSource) FetchPod(_ context.Context, namespace, name string) error {
	s.mu.Lock()
	s.fetched = append(s.fetched, ruleset.Ref{Namespace: namespace, Name: name})
	s.mu.Unlock()
	s.set(s.known)
	return nil
}

func (s *fetchingSource) fetchedRefs() []ruleset.Ref {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ruleset.Ref(nil), s.fetched...)
}

func TestAttachOfAPodTheSourceLacksFetchesItAndThenEnforcesIt(t *testing.T) {
	objs := webObjects()
	src := &fetchingSource{fakeSource: newFakeSource(source.Objects{Policies: objs.Policies}), known: objs}
	dp := newFakeDataplane()
	a := startAgent(t, src, dp, policy.ModeDeny)
	waitUntil(t, "ready", a.Ready)

	if err := a.Attach(context.Background(), attachmentA()); err != nil {
		t.Fatal(err)
	}
	// Until the source has the pod, its chains exist and allow nothing;
	// the fetch then brings it and the policy opens it.
	waitUntil(t, "the fetched pod enforced", func() bool { return allows(ingressChain(t, dp.last(), keyA)) })
	if got := src.fetchedRefs(); len(got) != 1 || got[0] != (ruleset.Ref{Namespace: "x", Name: "a"}) {
		t.Errorf("fetched %v, want x/a once", got)
	}
}

func TestMetricsAreServedOnTheSocketWhenTheAPIHasThem(t *testing.T) {
	a := startAgent(t, newFakeSource(source.Objects{}), newFakeDataplane(), policy.ModeDeny)
	m := NewMetrics()
	set := m.Gauge("podwall_test_gauge", "A gauge for the test.")
	set(3)
	srv := httptest.NewServer(Handler(struct {
		API
		MetricsServer
	}{a, metricsHandler{m}}, testLog(t)))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	want := "# HELP podwall_test_gauge A gauge for the test.\n# TYPE podwall_test_gauge gauge\npodwall_test_gauge 3\n"
	if resp.StatusCode != http.StatusOK || string(body) != want {
		t.Errorf("GET /metrics: %d %q, want %q", resp.StatusCode, body, want)
	}

	// Without metrics the path is not served.
	plain := httptest.NewServer(Handler(a, testLog(t)))
	defer plain.Close()
	resp2, err := http.Get(plain.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics without metrics: %d, want 404", resp2.StatusCode)
	}
}

type metricsHandler struct{ m *Metrics }

func (h metricsHandler) Metrics() http.Handler { return h.m }

// TestWatchLagWithTheKubernetesSource runs the agent on source.Kube whose
// pod watch delivers nothing after the initial list: the attached pod is
// known only through the direct look-up, and gets its policy from it.
func TestWatchLagWithTheKubernetesSource(t *testing.T) {
	objs := webObjects()
	client := fake.NewClientset(&objs.Policies[0], &objs.Pods[1])
	client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) { return true, watch.NewFake(), nil })
	kube, err := source.NewKube(client, metadatafake.NewSimpleMetadataClient(metadatafake.NewTestScheme()), "node-1", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kube.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	dp := newFakeDataplane()
	a := startAgent(t, kube, dp, policy.ModeDeny)
	waitUntil(t, "ready", a.Ready)

	// The pod reaches the API server after the informer's list: only a
	// direct look-up can know it.
	web := objs.Pods[0]
	web.ResourceVersion = "100"
	if err := client.Tracker().Add(&web); err != nil {
		t.Fatal(err)
	}
	if err := a.Attach(context.Background(), attachmentA()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the fetched pod's policy applied", func() bool { return allows(ingressChain(t, dp.last(), keyA)) })
}
