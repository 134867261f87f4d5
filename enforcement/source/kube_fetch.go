package source

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podwall/podwall/enforcement/changes"
)

// FetchPod implements PodFetcher: when the informer lacks the pod, it GETs
// it from the API server (a quorum read) and holds it in an overlay until
// the informer has it. A pod the API server does not know is left to the
// informer, which brings it when it is created. Transient errors are
// retried with backoff until ctx ends.
func (k *Kube) FetchPod(ctx context.Context, namespace, name string) error {
	if namespace == "" {
		namespace = corev1.NamespaceDefault
	}
	key := namespace + "/" + name
	backoff := 100 * time.Millisecond
	for {
		if k.hasPod(key) {
			return nil
		}
		pod, err := k.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			k.addOverlay(key, stripPod(pod))
			k.log.Info("pod fetched from the API server ahead of the informer", "pod", key, "resourceVersion", pod.ResourceVersion)
			return nil
		case apierrors.IsNotFound(err):
			k.log.Info("attached pod not known to the API server yet; it stays default-deny until it is", "pod", key)
			return nil
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			return fmt.Errorf("fetching pod %s: %w", key, err)
		}
		k.log.Warn("fetching attached pod; retrying", "pod", key, "err", err, "retryIn", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("fetching pod %s: %w", key, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (k *Kube) hasPod(key string) bool {
	_, ok, err := k.pods.GetStore().GetByKey(key)
	if err == nil && ok {
		return true
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok = k.overlay[key]
	return ok
}

func (k *Kube) addOverlay(key string, pod *corev1.Pod) {
	k.mu.Lock()
	if _, ok, err := k.pods.GetStore().GetByKey(key); err == nil && ok {
		k.mu.Unlock()
		return // the informer caught up meanwhile
	}
	k.overlay[key] = pod
	k.pending.Pod(pod.Namespace, pod.Name)
	k.dirty = true
	k.mu.Unlock()
	signal(k.changes)
}

// forgetOverlay drops the overlay's copy of a pod the informer now reports
// (added or deleted): from then on the informer is the truth.
func (k *Kube) forgetOverlay(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	k.mu.Lock()
	if p, ok := k.overlay[key]; ok {
		delete(k.overlay, key)
		k.pending.Pod(p.Namespace, p.Name)
	}
	k.mu.Unlock()
}

// pruneOverlay drops pods the informer has, and pods the informer has
// moved past without having them: deleted before it got to them, and
// records them in ch. k.mu is held.
func (k *Kube) pruneOverlay(ch *changes.Set) {
	if len(k.overlay) == 0 {
		return
	}
	seen := k.pods.LastSyncResourceVersion()
	for key, p := range k.overlay {
		_, ok, err := k.pods.GetStore().GetByKey(key)
		if (err == nil && ok) || resourceVersionAtLeast(seen, p.ResourceVersion) {
			delete(k.overlay, key)
			ch.Pod(p.Namespace, p.Name)
		}
	}
}
