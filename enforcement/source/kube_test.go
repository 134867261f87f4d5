package source

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/podwall/podwall/enforcement/changes"
)

func testPod(ns, name, rv string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv, Labels: labels,
			Annotations:   map[string]string{"big": strings.Repeat("x", 1000)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
			Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9090}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func testObjects() []runtime.Object {
	return []runtime.Object{
		testPod("x", "a", "5", map[string]string{"app": "web"}),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", ResourceVersion: "2", Labels: map[string]string{"team": "a"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p", ResourceVersion: "3",
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", ResourceVersion: "4"},
			Spec: corev1.NodeSpec{PodCIDR: "10.244.0.0/24", PodCIDRs: []string{"10.244.0.0/24", "fd00:10:244::/64"}, ProviderID: "x"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2", ResourceVersion: "4"}},
	}
}

// runKube runs k until the test ends and waits until its caches synced.
func runKube(t *testing.T, k *Kube) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitKube(t, "the caches synced", func() bool {
		_, _, err := k.Snapshot()
		return err == nil
	})
}

func newTestKube(t *testing.T, client *fake.Clientset) (*Kube, *metadatafake.FakeMetadataClient) {
	t.Helper()
	meta := metadatafake.NewSimpleMetadataClient(metadatafake.NewTestScheme())
	k, err := NewKube(client, meta, "node-1", nil, WithResyncTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return k, meta
}

func TestKubeIsNotSyncedBeforeItsCachesAre(t *testing.T) {
	k, _ := newTestKube(t, fake.NewClientset(testObjects()...))
	if _, _, err := k.Snapshot(); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Snapshot before Run: %v, want ErrNotSynced", err)
	}
	if err := k.Resync(context.Background()); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Resync before Run: %v, want ErrNotSynced at once", err)
	}
	runKube(t, k)
	objs, _, err := k.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Pods) != 1 || len(objs.Namespaces) != 1 || len(objs.Policies) != 1 {
		t.Fatalf("snapshot: %d pods, %d namespaces, %d policies", len(objs.Pods), len(objs.Namespaces), len(objs.Policies))
	}
	p := objs.Pods[0]
	if p.ManagedFields != nil || p.Annotations != nil || p.Status.Conditions != nil || p.Spec.Containers[0].Image != "" ||
		p.Spec.Containers[0].Env != nil {
		t.Errorf("pod not stripped: %+v", p)
	}
	if p.Labels["app"] != "web" || p.Spec.NodeName != "node-1" || p.Status.PodIPs[0].IP != "10.244.0.5" ||
		p.Status.Phase != corev1.PodRunning || p.ResourceVersion != "5" ||
		len(p.Spec.Containers[0].Ports) != 1 || p.Spec.Containers[0].Ports[0].Name != "http" {
		t.Errorf("pod lost what the compiler needs: %+v", p)
	}
	if objs.Policies[0].Annotations != nil || objs.Namespaces[0].ManagedFields != nil || objs.Namespaces[0].Labels["team"] != "a" {
		t.Errorf("policy or namespace not stripped: %+v %+v", objs.Policies[0], objs.Namespaces[0])
	}
	n := k.Node()
	if n == nil || n.Name != "node-1" || len(n.Spec.PodCIDRs) != 2 || n.Spec.ProviderID != "" {
		t.Errorf("node: %+v", n)
	}
}

func TestKubeSignalsChanges(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	k, _ := newTestKube(t, client)
	runKube(t, k)
	ctx := context.Background()
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "q"}}
	if _, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKube(t, "the new policy in the snapshot", func() bool {
		objs, _, _ := k.Snapshot()
		return len(objs.Policies) == 2
	})
	if err := client.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKube(t, "the pod gone from the snapshot", func() bool {
		objs, _, _ := k.Snapshot()
		return len(objs.Pods) == 0
	})
}

func TestSamePodForCompiler(t *testing.T) {
	base := stripPod(testPod("x", "a", "5", map[string]string{"app": "web"}))
	statusOnly := base.DeepCopy()
	statusOnly.ResourceVersion = "6"
	if !samePodForCompiler(base, statusOnly) {
		t.Error("a new resourceVersion alone is a change for the compiler")
	}
	for name, mutate := range map[string]func(p *corev1.Pod){
		"labels":   func(p *corev1.Pod) { p.Labels = map[string]string{"app": "db"} },
		"ip":       func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.6"}} },
		"phase":    func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		"node":     func(p *corev1.Pod) { p.Spec.NodeName = "node-2" },
		"hostNet":  func(p *corev1.Pod) { p.Spec.HostNetwork = true },
		"port":     func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 81 },
		"new uid":  func(p *corev1.Pod) { p.UID = "other" },
		"no ports": func(p *corev1.Pod) { p.Spec.Containers = nil },
	} {
		changed := base.DeepCopy()
		mutate(changed)
		if samePodForCompiler(base, changed) {
			t.Errorf("%s: not seen as a change", name)
		}
	}
}

// blockPodWatch makes the pods informer see the initial list and then
// nothing until the test sends on the returned watcher: the watch lag.
func blockPodWatch(client *fake.Clientset) *watch.FakeWatcher {
	w := watch.NewFake()
	client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) { return true, w, nil })
	return w
}

func TestFetchPodCoversTheWatchLag(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	lagging := blockPodWatch(client)
	k, _ := newTestKube(t, client)
	runKube(t, k)
	ctx := context.Background()

	late := testPod("y", "late", "20", map[string]string{"app": "late"})
	if err := client.Tracker().Add(late); err != nil {
		t.Fatal(err)
	}
	if err := k.FetchPod(ctx, "y", "late"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Changes():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled after the fetch")
	}
	objs, _, _ := k.Snapshot()
	if len(objs.Pods) != 2 || !hasPod(objs, "y", "late") {
		t.Fatalf("fetched pod missing from the snapshot: %+v", objs.Pods)
	}
	if objs.Pods[1].Annotations != nil {
		t.Errorf("fetched pod not stripped")
	}

	// Unknown to the API server: nothing to add, no error.
	if err := k.FetchPod(ctx, "y", "nobody"); err != nil {
		t.Errorf("fetching a pod the API server does not know: %v", err)
	}

	// The informer catches up: one copy of the pod, the informer's.
	informers := late.DeepCopy()
	informers.Labels = map[string]string{"app": "late", "v": "2"}
	informers.ResourceVersion = "21"
	lagging.Add(informers)
	waitKube(t, "the informer's copy in the snapshot", func() bool {
		objs, _, _ := k.Snapshot()
		n := 0
		for _, p := range objs.Pods {
			if p.Name == "late" {
				n++
				if p.Labels["v"] != "2" {
					return false
				}
			}
		}
		return n == 1
	})
}

func TestOverlayForgetsAPodDeletedBeforeTheInformerSawIt(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	lagging := blockPodWatch(client)
	k, _ := newTestKube(t, client)
	runKube(t, k)
	if err := client.Tracker().Add(testPod("y", "brief", "20", nil)); err != nil {
		t.Fatal(err)
	}
	if err := k.FetchPod(context.Background(), "y", "brief"); err != nil {
		t.Fatal(err)
	}
	if objs, _, _ := k.Snapshot(); !hasPod(objs, "y", "brief") {
		t.Fatal("fetched pod missing")
	}
	// The informer moves past the pod's version without ever having it.
	lagging.Add(testPod("z", "later", "30", nil))
	waitKube(t, "the deleted pod gone from the snapshot", func() bool {
		objs, _, _ := k.Snapshot()
		return hasPod(objs, "z", "later") && !hasPod(objs, "y", "brief")
	})
}

func hasPod(objs Objects, ns, name string) bool {
	for _, p := range objs.Pods {
		if p.Namespace == ns && p.Name == name {
			return true
		}
	}
	return false
}

func TestResyncWaitsUntilTheCacheHoldsWhatTheAPIServerListed(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	k, meta := newTestKube(t, client)
	runKube(t, k)
	// The fake lists carry no resourceVersion; the API server's would.
	lists := map[string]*metav1.List{
		"pods":            metaList("40", item("x", "a", "5")),
		"namespaces":      metaList("40", item("", "x", "2")),
		"networkpolicies": metaList("40", item("x", "p", "3")),
	}
	meta.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, lists[a.GetResource().Resource].DeepCopy(), nil
	})
	if err := k.Resync(context.Background()); err != nil {
		t.Fatalf("Resync with the cache current: %v", err)
	}

	// A pod the API server has and the cache has not yet.
	lists["pods"] = metaList("41", item("x", "a", "5"), item("x", "b", "41"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := k.Resync(ctx); err == nil || !strings.Contains(err.Error(), "pods cache") {
		t.Fatalf("Resync with the pod missing from the cache: %v, want a timeout naming the pods cache", err)
	}
	done := make(chan error, 1)
	go func() { done <- k.Resync(context.Background()) }()
	if _, err := client.CoreV1().Pods("x").Create(context.Background(), testPod("x", "b", "41", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Resync once the informer has the pod: %v", err)
	}
	if objs, _, _ := k.Snapshot(); !hasPod(objs, "x", "b") {
		t.Error("Resync returned before the snapshot had the pod")
	}

	// The API server unreachable: an error, the caches kept.
	meta.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connect: connection refused")
	})
	if err := k.Resync(context.Background()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Resync with the API server down: %v", err)
	}
	// The last state seen stays, and the outage is reported with it.
	if objs, _, err := k.Snapshot(); err == nil || !strings.Contains(err.Error(), "unreachable since") || len(objs.Pods) != 2 {
		t.Errorf("snapshot with the API server down: %d pods, %v", len(objs.Pods), err)
	}
}

// metaList is a list as the fake metadata client wants it from a reactor.
func metaList(rv string, items ...metav1.PartialObjectMetadata) *metav1.List {
	l := &metav1.List{ListMeta: metav1.ListMeta{ResourceVersion: rv}}
	for i := range items {
		l.Items = append(l.Items, runtime.RawExtension{Object: &items[i]})
	}
	return l
}

func item(ns, name, rv string) metav1.PartialObjectMetadata {
	return metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv}}
}

func TestCaughtUp(t *testing.T) {
	pod := func(name, rv string) any {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, ResourceVersion: rv}}
	}
	listed := map[string]string{"x/a": "10", "x/b": "12"}
	tests := []struct {
		name     string
		lastSeen string
		cached   []any
		want     bool
	}{
		{"informer past the list", "25", nil, true},
		{"informer at the list", "20", nil, true},
		{"same objects and versions", "12", []any{pod("a", "10"), pod("b", "12")}, true},
		{"newer versions", "3", []any{pod("a", "11"), pod("b", "19")}, true},
		{"one created after the list", "3", []any{pod("a", "10"), pod("b", "12"), pod("c", "21")}, true},
		{"one older", "3", []any{pod("a", "9"), pod("b", "12")}, false},
		{"one missing", "3", []any{pod("a", "10")}, false},
		{"one deleted before the list still cached", "3", []any{pod("a", "10"), pod("b", "12"), pod("c", "7")}, false},
		{"an extra one at the list's version", "3", []any{pod("a", "10"), pod("b", "12"), pod("c", "20")}, false},
	}
	for _, tc := range tests {
		store := cache.NewStore(cache.MetaNamespaceKeyFunc)
		for _, obj := range tc.cached {
			if err := store.Add(obj); err != nil {
				t.Fatal(err)
			}
		}
		if got := caughtUp(tc.lastSeen, "20", listed, store); got != tc.want {
			t.Errorf("%s: caughtUp = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestResourceVersionAtLeast(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"10", "9", true}, {"9", "10", false}, {"10", "10", true}, {"", "1", false}, {"1", "", false},
		{"abc", "abc", true}, {"abc", "abd", false}, {"12", "x", false},
	} {
		if got := resourceVersionAtLeast(tc.a, tc.b); got != tc.want {
			t.Errorf("resourceVersionAtLeast(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestNodeEvent(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	k, _ := newTestKube(t, client)
	runKube(t, k)
	if err := k.NodeEvent(context.Background(), corev1.EventTypeWarning, "PodCIDRConflict", "pod CIDR 10.244.0.0/24 lies inside 10.0.0.0/8"); err != nil {
		t.Fatal(err)
	}
	evs, err := client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
	if err != nil || len(evs.Items) != 1 {
		t.Fatalf("events: %v, %v", evs, err)
	}
	ev := evs.Items[0]
	if ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != "node-1" || ev.Reason != "PodCIDRConflict" ||
		ev.Type != corev1.EventTypeWarning || ev.Source.Component != "podwall-agent" || !strings.Contains(ev.Message, "10.0.0.0/8") {
		t.Errorf("event: %+v", ev)
	}
	// Only create is used: the agent's RBAC has nothing more on events.
	for _, a := range client.Actions() {
		if a.GetResource() == (schema.GroupVersionResource{Version: "v1", Resource: "events"}) && a.GetVerb() != "create" && a.GetVerb() != "list" {
			t.Errorf("event verb %s used", a.GetVerb())
		}
	}
}

func waitKube(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestKubeReportsAnUnreachableAPIServerUntilItAnswers(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	k, meta := newTestKube(t, client)
	runKube(t, k)
	meta.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, metaList("1"), nil
	})
	drain := func() {
		select {
		case <-k.Changes():
		default:
		}
	}
	drain()
	r := cache.NewReflector(&cache.ListWatch{}, &corev1.Pod{}, cache.NewStore(cache.MetaNamespaceKeyFunc), 0)

	// The ordinary end of a watch is no failure.
	k.watchFailed(context.Background(), r, io.EOF)
	if _, _, err := k.Snapshot(); err != nil {
		t.Fatalf("after a watch's normal end: %v", err)
	}

	k.watchFailed(context.Background(), r, errors.New("dial tcp 10.0.0.1:6443: connect: connection refused"))
	select {
	case <-k.Changes():
	default:
		t.Fatal("a watch failure is not signalled")
	}
	objs, _, err := k.Snapshot()
	if err == nil || !strings.Contains(err.Error(), "unreachable since") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Snapshot with the watch failing: %v", err)
	}
	if len(objs.Pods) != 1 || len(objs.Policies) != 1 {
		t.Errorf("the last state seen is not kept: %+v", objs)
	}
	if err := k.Resync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Snapshot(); err != nil {
		t.Errorf("after the API server answered: %v", err)
	}
}

// The source reports the objects that changed since the last Snapshot, as
// its informers report them: an update that changes nothing the compiler
// reads is not a change; a failed watch makes the changes unknown.
func TestKubeReportsWhatChanged(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	k, _ := newTestKube(t, client)
	runKube(t, k) // takes the first, unknown, changes
	ctx := context.Background()
	seen := changes.None()
	until := func(what string, cond func(Objects) bool) string {
		t.Helper()
		waitKube(t, what, func() bool {
			objs, ch, _ := k.Snapshot()
			seen.Merge(ch)
			return cond(objs)
		})
		got := describeChanges(seen)
		seen = changes.None()
		return got
	}
	if _, ch, _ := k.Snapshot(); describeChanges(ch) != "none" {
		t.Errorf("nothing happened, yet %s", describeChanges(ch))
	}

	// An annotation of p, then a new policy q, which its informer sees
	// after.
	p, err := client.NetworkingV1().NetworkPolicies("x").Get(ctx, "p", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = map[string]string{"note": "changed"}
	p.ResourceVersion = "30"
	if _, err := client.NetworkingV1().NetworkPolicies("x").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	q := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "q"}}
	if _, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, q, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := until("q", func(o Objects) bool { return len(o.Policies) == 2 }); got != "policies [x/q]" {
		t.Errorf("after an annotation of p and q created: %s", got)
	}

	ns, err := client.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{"team": "b"}
	if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := until("x relabelled", func(o Objects) bool { return o.Namespaces[0].Labels["team"] == "b" }); got != "namespaces [x]" {
		t.Errorf("after x relabelled: %s", got)
	}

	if err := client.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := until("a deleted", func(o Objects) bool { return len(o.Pods) == 0 }); got != "pods [x/a]" {
		t.Errorf("after a deleted: %s", got)
	}

	r := cache.NewReflector(&cache.ListWatch{}, &corev1.Pod{}, cache.NewStore(cache.MetaNamespaceKeyFunc), 0)
	k.watchFailed(ctx, r, errors.New("connection reset"))
	if _, ch, _ := k.Snapshot(); !ch.Unknown() {
		t.Errorf("after a failed watch: %s, want unknown", describeChanges(ch))
	}
}
