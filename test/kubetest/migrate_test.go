package kubetest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// migratePod is a pod of the migration test as it is registered.
type migratePod struct {
	name, node, ip string
	hostNetwork    bool
	labels         map[string]string
}

// TestIPAMMigrateEvict runs the real podwallctl inside a node namespace,
// with the agent's kubeconfig (deploy/'s ClusterRole: the least rights),
// against a real API server: the node's pods in the draining range are
// evicted one at a time, the one a PodDisruptionBudget protects is refused
// until the timeout (exit 1), and no other pod is touched.
func TestIPAMMigrateEvict(t *testing.T) {
	cp := k8senv.StartControlPlane(t)
	node := harness.NewNode(t)
	link := cp.ConnectNode(t, "node-a", node.NetNS())
	client := cp.Clientset(t)
	ctx := ctxFor(t, 2*time.Minute)

	const ns = "mig"
	if err := k8senv.CreateNamespace(ctx, client, ns, nil); err != nil {
		t.Fatal(err)
	}
	pods := []migratePod{
		{name: "a", node: "node-a", ip: "10.244.1.10"},
		{name: "b", node: "node-a", ip: "10.244.1.11"},
		{name: "c", node: "node-a", ip: "10.244.1.12"},
		{name: "new", node: "node-a", ip: "100.64.1.10"},
		{name: "far", node: "node-b", ip: "10.244.1.13"},
		{name: "hostnet", node: "node-a", ip: "10.244.1.14", hostNetwork: true},
		{name: "guarded", node: "node-a", ip: "10.244.1.15", labels: map[string]string{"app": "guarded"}},
	}
	uids := map[string]types.UID{}
	for _, p := range pods {
		uids[p.name] = registerMigratePod(ctx, t, client, ns, p)
	}
	// No disruption controller runs, so the budget's status is never
	// observed and the API server refuses every eviction it covers (429),
	// as it does while a real budget allows no disruption.
	minAvailable := intstr.FromInt32(1)
	_, err := client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guarded"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &minAvailable,
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	conflist := filepath.Join(t.TempDir(), "10-podnet.conflist")
	err = os.WriteFile(conflist, []byte(`{"cniVersion": "1.0.0", "name": "podnet", "plugins": [
 {"type": "bridge", "bridge": "cni1", "ipam": {"type": "podwall-ipam",
  "ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"}],
  "dataDir": "`+t.TempDir()+`"}}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"ipam", "migrate", "--config", conflist, "--node-name", "node-a", "--kubeconfig", link.Kubeconfig}

	// The dry run lists the four pods and evicts nothing.
	code, stdout, stderr := runPodwallctl(t, node, args...)
	if code != 0 || !strings.Contains(stdout, "4 pods hold an address in a draining range") {
		t.Fatalf("dry run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, name := range []string{"mig/a", "mig/b", "mig/c", "mig/guarded"} {
		if !strings.Contains(stdout, name) {
			t.Errorf("dry run does not list %s:\n%s", name, stdout)
		}
	}
	assertUntouched(ctx, t, client, ns, uids, "a", "b", "c", "new", "far", "hostnet", "guarded")

	kl := startFakeKubelet(ctx, t, client, "node-a")
	started := time.Now()
	code, stdout, stderr = runPodwallctl(t, node, append(args, "--evict", "--force", "--timeout", "4s")...)
	t.Logf("migrate --evict: exit %d in %v\nstdout:\n%s\nstderr:\n%s", code, time.Since(started).Round(time.Millisecond), stdout, stderr)
	if code != 1 {
		t.Errorf("exit %d, want 1 (the guarded pod could not be evicted)", code)
	}
	if !strings.Contains(stdout, "3 of 4 pods moved off") || !strings.Contains(stderr, "mig/guarded: eviction refused") {
		t.Errorf("the report does not say 3 moved and the guarded pod refused")
	}
	if got, want := kl.terminated(), []string{"a", "b", "c"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("pods terminated (deletionTimestamp set), in order: %q, want %q", got, want)
	}
	if kl.maxTerminating() > 1 {
		t.Errorf("%d pods terminating at once with --max-unavailable 1", kl.maxTerminating())
	}
	for _, name := range []string{"a", "b", "c"} {
		if _, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("pod %s not gone: %v", name, err)
		}
	}
	assertUntouched(ctx, t, client, ns, uids, "new", "far", "hostnet", "guarded")
}

// registerMigratePod creates a pod bound to its node, as a controller's,
// and sets its status as the node's kubelet would.
func registerMigratePod(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string, p migratePod) types.UID {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.name, Labels: p.labels},
		Spec: corev1.PodSpec{
			NodeName:    p.node,
			HostNetwork: p.hostNetwork,
			Containers:  []corev1.Container{{Name: "pause", Image: k8senv.PauseImage}},
		},
	}
	created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", p.name, err)
	}
	created.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		PodIP:      p.ip,
		PodIPs:     []corev1.PodIP{{IP: p.ip}},
		HostIP:     "10.198.1.2",
	}
	if p.hostNetwork {
		// A host-network pod's address is the node's.
		created.Status.HostIP = p.ip
	}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the status of pod %s: %v", p.name, err)
	}
	return created.UID
}

// runPodwallctl runs bin/podwallctl inside the node namespace, where the API
// server is routed to.
func runPodwallctl(t *testing.T, node *harness.Node, args ...string) (int, string, string) {
	t.Helper()
	bin, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "podwallctl"), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := node.Start(cmd); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("podwallctl: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func assertUntouched(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string, uids map[string]types.UID, names ...string) {
	t.Helper()
	for _, name := range names {
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			t.Errorf("pod %s: %v", name, err)
		case pod.UID != uids[name] || pod.DeletionTimestamp != nil:
			t.Errorf("pod %s touched: uid %s (was %s), deletionTimestamp %v", name, pod.UID, uids[name], pod.DeletionTimestamp)
		}
	}
}

// fakeKubelet finishes the graceful deletion of node's pods, as the node's
// kubelet does once their containers stopped (none runs here), and records
// the order in which they started terminating.
type fakeKubelet struct {
	mu    sync.Mutex
	order []string
	seen  map[string]bool
	most  int
}

func startFakeKubelet(ctx context.Context, t *testing.T, client kubernetes.Interface, node string) *fakeKubelet {
	kl := &fakeKubelet{seen: map[string]bool{}}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	selector := fields.OneTermEqualSelector("spec.nodeName", node).String()
	wg.Go(func() {
		for ctx.Err() == nil {
			list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: selector})
			if err == nil {
				kl.sync(ctx, t, client, list.Items)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	return kl
}

func (kl *fakeKubelet) sync(ctx context.Context, t *testing.T, client kubernetes.Interface, pods []corev1.Pod) {
	var terminating []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			terminating = append(terminating, p)
		}
	}
	kl.mu.Lock()
	for _, p := range terminating {
		if !kl.seen[p.Name] {
			kl.seen[p.Name] = true
			kl.order = append(kl.order, p.Name)
		}
	}
	kl.most = max(kl.most, len(terminating))
	kl.mu.Unlock()
	// A pause is left before deleting, so that a second eviction started
	// too early would be seen terminating alongside.
	time.Sleep(200 * time.Millisecond)
	for _, p := range terminating {
		uid := p.UID
		err := client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64(0)),
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
			t.Errorf("deleting terminating pod %s: %v", p.Name, err)
		}
	}
}

func (kl *fakeKubelet) terminated() []string {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	return append([]string(nil), kl.order...)
}

func (kl *fakeKubelet) maxTerminating() int {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	return kl.most
}
