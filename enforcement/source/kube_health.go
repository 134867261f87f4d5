package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// healthCheckInterval is how often, while a watch is failing, the API
// server is asked whether it answers again.
const healthCheckInterval = 5 * time.Second

// apiHealth is what Snapshot reports about the API server: the first watch
// failure since it last answered. k.mu guards it.
type apiHealth struct {
	err   error
	since time.Time
}

// watchFailed is the informers' watch error handler. A failing watch does
// not change what is enforced (the caches keep their contents); it is
// reported by Snapshot, hence in the agent's status, until the API server
// answers again.
func (k *Kube) watchFailed(ctx context.Context, r *cache.Reflector, err error) {
	cache.DefaultWatchErrorHandler(ctx, r, err)
	// The informer lists again: what its events report from then on is
	// not to be trusted as the only changes.
	k.mu.Lock()
	k.pending.MarkUnknown()
	k.dirty = true
	k.mu.Unlock()
	if errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		return // the ordinary end of a watch
	}
	k.apiFailed(err)
}

// apiFailed records that a request to the API server failed. The
// informers retry a refused connection inside their watch loop without
// telling their error handler, so Resync's failures count too.
func (k *Kube) apiFailed(err error) {
	k.mu.Lock()
	first := k.health.err == nil
	if first {
		k.health = apiHealth{err: err, since: time.Now()}
		k.dirty = true
	}
	k.mu.Unlock()
	if first {
		k.log.Warn("kubernetes API server failed; enforcing the last state seen until it answers", "err", err)
		signal(k.changes)
	}
}

// apiAnswered clears a reported failure once the API server answers.
func (k *Kube) apiAnswered() {
	k.mu.Lock()
	was := k.health.err != nil
	if was {
		k.log.Info("kubernetes API server answers again", "unreachableFor", time.Since(k.health.since).Round(time.Second))
		k.health = apiHealth{}
		k.dirty = true
	}
	k.mu.Unlock()
	if was {
		signal(k.changes)
	}
}

// healthError is the error Snapshot returns with the objects; k.mu held.
func (k *Kube) healthError() error {
	if k.health.err == nil {
		return nil
	}
	return fmt.Errorf("kubernetes API server unreachable since %s: %w", k.health.since.UTC().Format(time.RFC3339), k.health.err)
}

// checkHealth asks the API server, while a failure is reported, whether
// it answers again, until ctx ends.
func (k *Kube) checkHealth(ctx context.Context) {
	tick := time.NewTicker(healthCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		k.mu.Lock()
		failing := k.health.err != nil
		k.mu.Unlock()
		if !failing {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, healthCheckInterval)
		_, err := k.meta.Resource(namespacesResource).List(rctx, metav1.ListOptions{Limit: 1})
		cancel()
		if err == nil {
			k.apiAnswered()
		}
	}
}
