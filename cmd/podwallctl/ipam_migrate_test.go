package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const migrateConflist = `{"cniVersion": "1.0.0", "name": "podnet", "plugins": [
 {"type": "bridge", "bridge": "cni1", "ipam": {"type": "podwall-ipam",
  "ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"}],
  "dataDir": "/nonexistent/podwall-ipam"}}]}`

var testDraining = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}

func TestIPAMMigrateUsageErrors(t *testing.T) {
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "net.conflist"), migrateConflist)
	bad := writeFile(t, filepath.Join(dir, "bad.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.0.0.0/33"}]}}]}`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--config or --data-dir is required"},
		{[]string{"--config", conf, "--data-dir", dir}, "mutually exclusive"},
		{[]string{"--config", conf, "--max-unavailable", "0"}, "--max-unavailable must be at least 1, not 0"},
		{[]string{"--config", conf, "--timeout", "-1s"}, "--timeout must be positive"},
		{[]string{"--config", conf, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--config", bad}, "10.0.0.0/33"},
		{[]string{"--config", filepath.Join(dir, "missing")}, "reading configuration"},
	} {
		r := runWithRoutes(nil, append([]string{"ipam", "migrate"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("migrate %q: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.stderr, exitUsage, tc.want)
		}
	}
}

// TestIPAMMigrateNoDraining: nothing to do is said, and the API server is
// not even needed.
func TestIPAMMigrateNoDraining(t *testing.T) {
	conf := writeFile(t, filepath.Join(t.TempDir(), "net.conflist"), strings.Replace(migrateConflist, `"draining": true`, `"draining": false`, 1))
	r := runWithRoutes(nil, "ipam", "migrate", "--config", conf, "--kubeconfig", "/nonexistent", "--evict")
	if r.code != exitOK || !strings.Contains(r.stdout, "no draining range in "+conf+": nothing to migrate") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestIPAMMigrateBadKubeconfig(t *testing.T) {
	conf := writeFile(t, filepath.Join(t.TempDir(), "net.conflist"), migrateConflist)
	r := runWithRoutes(nil, "ipam", "migrate", "--config", conf, "--node-name", "n", "--kubeconfig", "/nonexistent/kubeconfig")
	if r.code != exitFailed || !strings.Contains(r.stderr, "/nonexistent/kubeconfig") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func testPod(node, ns, name string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "rs", Controller: new(true)}}},
		Spec:   corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

// runMigrate runs the migration against client as the command does after
// reading the configuration.
func runMigrate(t *testing.T, client *fake.Clientset, o migrateOptions) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr}
	if o.node == "" {
		o.node = "node-a"
	}
	if o.maxUnavailable == 0 {
		o.maxUnavailable = 1
	}
	if o.timeout == 0 {
		o.timeout = 10 * time.Second
	}
	o.firstBackoff, o.pollInterval = 5*time.Millisecond, 2*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := a.migrate(ctx, client, o, testDraining)
	return result{code, stdout.String(), stderr.String()}
}

var podsResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// kubelet stands for the node's kubelet: an evicted pod is deleted after
// delay. It records the evictions and the most pods going at once.
type kubelet struct {
	client *fake.Clientset
	delay  time.Duration
	// refuse answers 429 to the first refuse[name] evictions of a pod (-1:
	// always), as the API server does for a disruption budget.
	refuse map[string]int
	// keep: evicted pods that are never deleted (a dead kubelet).
	keep map[string]bool

	mu       sync.Mutex
	evicted  []string
	going    int
	maxGoing int
	wg       sync.WaitGroup
}

func newKubelet(t *testing.T, client *fake.Clientset) *kubelet {
	k := &kubelet{client: client, delay: 20 * time.Millisecond, refuse: map[string]int{}, keep: map[string]bool{}}
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev := action.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction)
		name := ev.Namespace + "/" + ev.Name
		if ev.DeleteOptions == nil || ev.DeleteOptions.Preconditions == nil || ev.DeleteOptions.Preconditions.UID == nil {
			t.Errorf("eviction of %s without a UID precondition", name)
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if n := k.refuse[name]; n != 0 {
			k.refuse[name] = n - 1
			err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
			return true, nil, err
		}
		if _, err := client.Tracker().Get(podsResource, ev.Namespace, ev.Name); err != nil {
			return true, nil, err
		}
		k.evicted = append(k.evicted, name)
		k.going++
		k.maxGoing = max(k.maxGoing, k.going)
		if k.keep[name] {
			return true, nil, nil
		}
		k.wg.Go(func() {
			time.Sleep(k.delay)
			k.mu.Lock()
			k.going--
			k.mu.Unlock()
			if err := client.Tracker().Delete(podsResource, ev.Namespace, ev.Name); err != nil {
				t.Errorf("deleting %s: %v", name, err)
			}
		})
		return true, nil, nil
	})
	t.Cleanup(k.wg.Wait)
	return k
}

func (k *kubelet) evictions() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.evicted)
}

func fakeCluster(pods ...*corev1.Pod) *fake.Clientset {
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	return fake.NewClientset(objs...)
}

// TestIPAMMigrateSelection: only this node's pods with an address in a
// draining range, sorted; host-network, finished and other nodes' pods
// never; the dry run evicts nothing.
func TestIPAMMigrateSelection(t *testing.T) {
	hostNet := testPod("node-a", "kube-system", "hostnet", "10.244.1.77")
	hostNet.Spec.HostNetwork = true
	finished := testPod("node-a", "default", "job", "10.244.1.8")
	finished.Status.Phase = corev1.PodSucceeded
	bare := testPod("node-a", "default", "bare", "10.244.1.9")
	bare.OwnerReferences = nil
	mirror := testPod("node-a", "kube-system", "static", "10.244.1.10")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
	client := fakeCluster(
		testPod("node-a", "web", "b", "10.244.1.5"),
		testPod("node-a", "web", "a", "100.64.1.4", "10.244.1.6"),
		testPod("node-a", "web", "new", "100.64.1.5"),
		testPod("node-b", "web", "elsewhere", "10.244.1.7"),
		testPod("node-a", "web", "pending"),
		hostNet, finished, bare, mirror,
	)
	k := newKubelet(t, client)
	r := runMigrate(t, client, migrateOptions{})
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
	var got []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && strings.Contains(f[0], "/") {
			got = append(got, f[0]+" "+f[1])
		}
	}
	want := []string{"default/bare 10.244.1.9", "kube-system/static 10.244.1.10", "web/a 10.244.1.6", "web/b 10.244.1.5"}
	if !slices.Equal(got, want) {
		t.Errorf("listed %q, want %q; stdout:\n%s", got, want, r.stdout)
	}
	for _, s := range []string{"draining ranges: 10.244.1.0/24", "node node-a: 4 pods", "evicted only with --force", "mirror of a static pod", "dry run: pass --evict"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
	if ev := k.evictions(); len(ev) != 0 {
		t.Errorf("dry run evicted %q", ev)
	}
}

// TestIPAMMigrateEvictInOrder: every candidate evicted in order, never more
// going at once than --max-unavailable, others untouched.
func TestIPAMMigrateEvictInOrder(t *testing.T) {
	for _, maxUnavailable := range []int{1, 3} {
		var pods []*corev1.Pod
		for i, n := range []string{"e", "c", "a", "d", "b", "f"} {
			pods = append(pods, testPod("node-a", "web", n, fmt.Sprintf("10.244.1.%d", 10+i)))
		}
		pods = append(pods, testPod("node-a", "web", "new", "100.64.1.5"), testPod("node-b", "web", "far", "10.244.1.20"))
		client := fakeCluster(pods...)
		k := newKubelet(t, client)
		r := runMigrate(t, client, migrateOptions{evict: true, maxUnavailable: maxUnavailable})
		if r.code != exitOK {
			t.Fatalf("max %d: exit %d, stdout %s stderr %s", maxUnavailable, r.code, r.stdout, r.stderr)
		}
		want := []string{"web/a", "web/b", "web/c", "web/d", "web/e", "web/f"}
		got := k.evictions()
		if maxUnavailable == 1 && !slices.Equal(got, want) {
			t.Errorf("max 1: evictions %q, want %q", got, want)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("max %d: evictions %q, want %q", maxUnavailable, got, want)
		}
		if k.maxGoing > maxUnavailable {
			t.Errorf("max %d: %d pods going at once", maxUnavailable, k.maxGoing)
		}
		if !strings.Contains(r.stdout, "6 of 6 pods moved off") {
			t.Errorf("max %d: stdout %s", maxUnavailable, r.stdout)
		}
		for _, name := range []string{"new", "far"} {
			if _, err := client.Tracker().Get(podsResource, "web", name); err != nil {
				t.Errorf("max %d: pod web/%s touched: %v", maxUnavailable, name, err)
			}
		}
	}
}

// TestIPAMMigrateDisruptionBudget: a 429 is retried with backoff and the
// others proceed meanwhile; a budget that never allows is reported after
// the timeout, with exit 1.
func TestIPAMMigrateDisruptionBudget(t *testing.T) {
	client := fakeCluster(testPod("node-a", "web", "a", "10.244.1.5"), testPod("node-a", "web", "b", "10.244.1.6"), testPod("node-a", "db", "z", "10.244.1.7"))
	k := newKubelet(t, client)
	k.refuse["web/a"] = 3
	k.refuse["db/z"] = -1 // never
	r := runMigrate(t, client, migrateOptions{evict: true, timeout: 500 * time.Millisecond})
	if r.code != exitFailed {
		t.Fatalf("exit %d, stdout %s stderr %s", r.code, r.stdout, r.stderr)
	}
	if got := k.evictions(); !slices.Equal(got, []string{"web/b", "web/a"}) && !slices.Equal(got, []string{"web/a", "web/b"}) {
		t.Errorf("evictions %q", got)
	}
	// web/a, refused first, is retried while web/b goes ahead.
	if got := k.evictions(); len(got) != 2 || got[0] != "web/b" {
		t.Errorf("web/b did not go ahead of the refused web/a: %q", got)
	}
	for _, s := range []string{"db/z: eviction refused", "2 of 3 pods moved off"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "1 pods could not be evicted") || !strings.Contains(r.stderr, "db/z: eviction refused") || !strings.Contains(r.stderr, "disruption budget") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if _, err := client.Tracker().Get(podsResource, "db", "z"); err != nil {
		t.Errorf("db/z: %v", err)
	}
}

// TestIPAMMigrateUnmanaged: pods no controller recreates are evicted only
// with --force; mirror pods never; a pod that stays after its eviction
// fails at the timeout.
func TestIPAMMigrateUnmanaged(t *testing.T) {
	bare := testPod("node-a", "default", "bare", "10.244.1.9")
	bare.OwnerReferences = nil
	mirror := testPod("node-a", "kube-system", "static", "10.244.1.10")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
	client := fakeCluster(bare, mirror, testPod("node-a", "web", "stuck", "10.244.1.11"))
	k := newKubelet(t, client)
	k.keep["web/stuck"] = true
	r := runMigrate(t, client, migrateOptions{evict: true, timeout: 200 * time.Millisecond})
	if r.code != exitFailed || !slices.Equal(k.evictions(), []string{"web/stuck"}) {
		t.Fatalf("without --force: exit %d, evictions %q, stdout %s", r.code, k.evictions(), r.stdout)
	}
	for _, s := range []string{"default/bare: no controller recreates it: not evicted without --force", "kube-system/static: mirror of a static pod", "web/stuck: evicted but still there after"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
		}
	}
	r = runMigrate(t, client, migrateOptions{evict: true, force: true, timeout: 200 * time.Millisecond})
	if r.code != exitFailed || !slices.Contains(k.evictions(), "default/bare") || slices.Contains(k.evictions(), "kube-system/static") {
		t.Fatalf("with --force: exit %d, evictions %q, stdout %s", r.code, k.evictions(), r.stdout)
	}
}

// TestIPAMMigrateReplaced: a pod replaced by one of the same name (a new
// UID) counts as moved.
func TestIPAMMigrateReplaced(t *testing.T) {
	client := fakeCluster(testPod("node-a", "db", "db-0", "10.244.1.5"))
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		repl := testPod("node-a", "db", "db-0", "100.64.1.9")
		repl.UID = "new"
		return true, nil, client.Tracker().Update(podsResource, repl, "db")
	})
	r := runMigrate(t, client, migrateOptions{evict: true})
	if r.code != exitOK || !strings.Contains(r.stdout, "db/db-0: replaced after") {
		t.Fatalf("exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
}

// TestIPAMMigrateEvictionError: an error other than a refusal is not
// retried.
func TestIPAMMigrateEvictionError(t *testing.T) {
	client := fakeCluster(testPod("node-a", "web", "a", "10.244.1.5"))
	calls := 0
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods/eviction"}, "a", nil)
	})
	r := runMigrate(t, client, migrateOptions{evict: true})
	if r.code != exitFailed || calls != 1 || !strings.Contains(r.stderr, "eviction failed") || !strings.Contains(r.stderr, "forbidden") {
		t.Fatalf("exit %d, %d calls, stderr %s", r.code, calls, r.stderr)
	}
}

// TestIPAMMigrateDataDir: the draining ranges come from each network's
// config.json; a network without one yet is only warned about.
func TestIPAMMigrateDataDir(t *testing.T) {
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr}
	dataDir := migratedDataDir(t)
	draining, source, code := a.drainingRanges(migrateOptions{dataDir: dataDir})
	if code != exitOK || source != dataDir || !slices.Equal(draining, testDraining) {
		t.Fatalf("draining %v from %s, exit %d, stderr %s", draining, source, code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "network other: no config.json yet") {
		t.Errorf("stderr: %s", stderr.String())
	}
	r := runWithRoutes(nil, "ipam", "migrate", "--data-dir", filepath.Join(t.TempDir(), "missing"))
	if r.code != exitUsage || !strings.Contains(r.stderr, "data dir") {
		t.Errorf("missing data dir: exit %d, stderr %s", r.code, r.stderr)
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
		resp, err := evictionRefusalsToCaller{next: next}.RoundTrip(req)
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

// TestIPAMMigrateTerminating: a pod already terminating is not evicted
// again, only awaited.
func TestIPAMMigrateTerminating(t *testing.T) {
	going := testPod("node-a", "web", "going", "10.244.1.5")
	going.OwnerReferences = nil // terminating: no --force needed
	going.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	client := fakeCluster(going)
	k := newKubelet(t, client)
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = client.Tracker().Delete(podsResource, "web", "going")
	}()
	r := runMigrate(t, client, migrateOptions{evict: true})
	if r.code != exitOK || len(k.evictions()) != 0 || !strings.Contains(r.stdout, "web/going: already terminating") || !strings.Contains(r.stdout, "web/going: gone after") {
		t.Fatalf("exit %d, evictions %q, stdout %s, stderr %s", r.code, k.evictions(), r.stdout, r.stderr)
	}
}
