package kubelettest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// benchPods is how many pods each node creates at once: enough for a p99
// that means something, few enough for a 2-core machine.
const (
	benchPods     = 20
	benchPolicies = 20
)

// BenchmarkKubeletPath measures the real kubelet path on one cluster: the
// time from a pod's creation through the API to the API server showing it
// Ready, on a node whose runtime chains bridge + host-local (the baseline)
// and on one where install.sh put podwall (bridge + podwall-ipam +
// podwall, agent in Kubernetes mode, deny mode); and on the podwall node,
// the time from a NetworkPolicy's creation to `podwallctl wait` returning.
func BenchmarkKubeletPath(b *testing.B) {
	harness.RequireRoot(b)
	cp := k8senv.StartControlPlane(b)
	client := cp.Clientset(b)

	reference := cp.StartKubeletNode(b, k8senv.NodeOptions{Conflist: k8senv.ReferenceConflist})
	refReady := podsToReady(b, client, reference, "bench-reference")

	node := cp.StartKubeletNode(b, k8senv.NodeOptions{})
	podwall := node.InstallPodwall(b, k8senv.PodwallOptions{DefaultPolicy: "deny"})
	pwReady := podsToReady(b, client, node, "bench-podwall")

	var enforced []time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := range benchPolicies * b.N {
		np := benchPolicy("bench-podwall", i)
		start := time.Now()
		if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := podwall.Wait(ctx); err != nil {
			b.Fatal(err)
		}
		enforced = append(enforced, time.Since(start))
	}

	refP50, refP99 := percentiles(refReady)
	pwP50, pwP99 := percentiles(pwReady)
	polP50, polP99 := percentiles(enforced)
	b.ReportMetric(ms(pwP50)/ms(refP50), "ready-p50-ratio")
	b.ReportMetric(ms(pwP99)/ms(refP99), "ready-p99-ratio")
	b.ReportMetric(ms(polP50), "policy-enforced-p50-ms")
	b.ReportMetric(ms(polP99), "policy-enforced-p99-ms")
	b.Logf("%d pods created at once, creation to Ready: bridge+host-local p50 %v p99 %v; podwall p50 %v p99 %v (ratios %.2f, %.2f)",
		benchPods, refP50, refP99, pwP50, pwP99, ms(pwP50)/ms(refP50), ms(pwP99)/ms(refP99))
	b.Logf("NetworkPolicy create to podwallctl wait returning, %d policies: p50 %v p99 %v", len(enforced), polP50, polP99)
}

// podsToReady creates benchPods pods on the node at once and returns, per
// pod, the time from its Create call to the first watch event showing it
// Ready with an address.
func podsToReady(b *testing.B, client kubernetes.Interface, node *k8senv.KubeletNode, namespace string) []time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := k8senv.CreateNamespace(ctx, client, namespace, nil); err != nil {
		b.Fatal(err)
	}
	w, err := client.CoreV1().Pods(namespace).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()

	var mu sync.Mutex
	created := map[string]time.Time{}
	go func() {
		for i := range benchPods {
			pod := node.PausePod(namespace, fmt.Sprintf("p%02d", i), map[string]string{"bench": "yes"}, 80)
			mu.Lock()
			created[pod.Name] = time.Now()
			mu.Unlock()
			if _, err := client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				b.Errorf("creating pod %s: %v", pod.Name, err)
				cancel()
				return
			}
		}
	}()
	ready := map[string]time.Duration{}
	for len(ready) < benchPods {
		select {
		case <-ctx.Done():
			b.Fatalf("%d of %d pods Ready on %s: %v", len(ready), benchPods, node.Name, ctx.Err())
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("pod watch closed")
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted || !podReady(pod) {
				continue
			}
			if _, seen := ready[pod.Name]; seen {
				continue
			}
			mu.Lock()
			ready[pod.Name] = time.Since(created[pod.Name])
			mu.Unlock()
		}
	}
	out := make([]time.Duration, 0, len(ready))
	for _, d := range ready {
		out = append(out, d)
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	if pod.Status.PodIP == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// benchPolicy opens one more port to the bench pods, so that every policy
// changes what is enforced.
func benchPolicy(namespace string, i int) *networkingv1.NetworkPolicy {
	port := intstr.FromInt32(int32(1000 + i))
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("bench-%03d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"bench": "yes"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
}

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return at(0.50), at(0.99)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
