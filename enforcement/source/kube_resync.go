package source

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

var (
	podsResource       = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	namespacesResource = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	policiesResource   = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
)

// Resync implements Source: it returns once the caches hold every change
// the API server had accepted when Resync was called. For each resource a
// quorum LIST of metadata gives the current resourceVersion; when the
// informer has already seen that version the cache is current. Otherwise
// (the informer sees only its own resource's events, so a quiet resource
// lags the cluster-wide version for ever) the listed objects and their
// versions are compared with the cache until it holds each at least at
// that version and nothing the list lacks but older. An unreachable API
// server fails the call; the caches keep what they had.
func (k *Kube) Resync(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, k.resyncTimeout)
		defer cancel()
	}
	// Not waited for: the agent's loop waits on Resync, and a first sync
	// may take as long as the API server is away. The caller retries.
	if !k.synced() {
		return ErrNotSynced
	}
	var g errgroup.Group
	for _, r := range []struct {
		gvr schema.GroupVersionResource
		inf cache.SharedIndexInformer
	}{{podsResource, k.pods}, {namespacesResource, k.namespaces}, {policiesResource, k.policies}} {
		g.Go(func() error { return k.catchUp(ctx, r.gvr, r.inf) })
	}
	if err := g.Wait(); err != nil {
		var listErr *apiError
		if errors.As(err, &listErr) && !errors.Is(err, context.Canceled) {
			k.apiFailed(listErr.err)
		}
		return err
	}
	k.apiAnswered()
	return nil
}

func (k *Kube) catchUp(ctx context.Context, gvr schema.GroupVersionResource, inf cache.SharedIndexInformer) error {
	// An empty resourceVersion is a quorum read. One item is enough to
	// learn the current version; the whole list only when the informer
	// has not seen that version yet.
	probe, err := k.meta.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return &apiError{gvr.Resource, err}
	}
	if resourceVersionAtLeast(inf.LastSyncResourceVersion(), probe.ResourceVersion) {
		return nil
	}
	l, err := k.meta.Resource(gvr).List(ctx, metav1.ListOptions{})
	if err != nil {
		return &apiError{gvr.Resource, err}
	}
	listed := make(map[string]string, len(l.Items))
	for i := range l.Items {
		if key, err := cache.MetaNamespaceKeyFunc(&l.Items[i]); err == nil {
			listed[key] = l.Items[i].ResourceVersion
		}
	}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !caughtUp(inf.LastSyncResourceVersion(), l.ResourceVersion, listed, inf.GetStore()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the %s cache to reach resourceVersion %s (it has seen %s): %w",
				gvr.Resource, l.ResourceVersion, inf.LastSyncResourceVersion(), ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// apiError is a failed request to the API server.
type apiError struct {
	resource string
	err      error
}

func (e *apiError) Error() string {
	return fmt.Sprintf("kubernetes API server: listing %s: %v", e.resource, e.err)
}

func (e *apiError) Unwrap() error { return e.err }

// caughtUp reports whether a cache that has seen lastSeen reflects a list
// taken at listRV: every listed object present at its listed version or
// newer, and nothing else but objects created after the list.
func caughtUp(lastSeen, listRV string, listed map[string]string, cached cache.Store) bool {
	if resourceVersionAtLeast(lastSeen, listRV) {
		return true
	}
	for key, rv := range listed {
		obj, ok, err := cached.GetByKey(key)
		if err != nil || !ok {
			return false
		}
		m, err := objectMeta(obj)
		if err != nil || !resourceVersionAtLeast(m.GetResourceVersion(), rv) {
			return false
		}
	}
	keys := cached.ListKeys()
	if len(keys) == len(listed) {
		return true // every cached object is a listed one
	}
	for _, key := range keys {
		if _, ok := listed[key]; ok {
			continue
		}
		obj, ok, err := cached.GetByKey(key)
		if err != nil || !ok {
			continue // deleted meanwhile
		}
		m, err := objectMeta(obj)
		if err != nil {
			continue
		}
		if rv := m.GetResourceVersion(); rv == listRV || !resourceVersionAtLeast(rv, listRV) {
			return false
		}
	}
	return true
}

// resourceVersionAtLeast compares resource versions. They are opaque to
// clients in principle; every etcd-backed API server issues them as the
// etcd revision, a decimal integer, and that is what is compared. Anything
// else is only ever equal.
func resourceVersionAtLeast(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return x >= y
}
