// Package migratetest fakes the API server and the node's kubelet for the
// tests of pod migration (ipam/migrate and podwallctl ipam migrate).
package migratetest

import (
	"slices"
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

// PodsResource is the pods' resource, for the fake's object tracker.
var PodsResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// Pod is a running pod of a ReplicaSet bound to node, with ips as its
// status.podIPs; its UID is "ns-name".
func Pod(node, ns, name string, ips ...string) *corev1.Pod {
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

// Cluster is a fake API server holding pods.
func Cluster(pods ...*corev1.Pod) *fake.Clientset {
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	return fake.NewClientset(objs...)
}

// Kubelet stands for the node's kubelet: an evicted pod is deleted after
// Delay. It records the evictions and the most pods going at once.
type Kubelet struct {
	Delay time.Duration
	// Refuse answers 429 to the first Refuse[name] evictions of a pod (-1:
	// always), as the API server does for a disruption budget.
	Refuse map[string]int
	// Keep: evicted pods that are never deleted (a dead kubelet).
	Keep map[string]bool

	mu       sync.Mutex
	evicted  []string
	going    int
	maxGoing int
	wg       sync.WaitGroup
}

// NewKubelet serves the evictions of client until the test ends; an
// eviction without a UID precondition fails the test.
func NewKubelet(t testing.TB, client *fake.Clientset) *Kubelet {
	k := &Kubelet{Delay: 20 * time.Millisecond, Refuse: map[string]int{}, Keep: map[string]bool{}}
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
		if n := k.Refuse[name]; n != 0 {
			k.Refuse[name] = n - 1
			err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
			return true, nil, err
		}
		if _, err := client.Tracker().Get(PodsResource, ev.Namespace, ev.Name); err != nil {
			return true, nil, err
		}
		k.evicted = append(k.evicted, name)
		k.going++
		k.maxGoing = max(k.maxGoing, k.going)
		if k.Keep[name] {
			return true, nil, nil
		}
		k.wg.Go(func() {
			time.Sleep(k.Delay)
			k.mu.Lock()
			k.going--
			k.mu.Unlock()
			if err := client.Tracker().Delete(PodsResource, ev.Namespace, ev.Name); err != nil {
				t.Errorf("deleting %s: %v", name, err)
			}
		})
		return true, nil, nil
	})
	t.Cleanup(k.wg.Wait)
	return k
}

// Evictions are the pods evicted so far ("ns/name"), in order.
func (k *Kubelet) Evictions() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.evicted)
}

// MaxGoing is the most evicted pods that were going at once.
func (k *Kubelet) MaxGoing() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.maxGoing
}
