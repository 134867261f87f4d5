package agent

import (
	"context"
	"time"

	"github.com/podwall/podwall/enforcement/source"
)

// fetchTimeout bounds the direct look-up of one attached pod.
const fetchTimeout = 2 * time.Minute

// fetchPod covers the watch lag: the plugin may attach a pod before the
// source has seen it. When the source can look pods up directly, it is
// asked to, off the loop; the source signals Changes when it has the pod,
// and until then the pod's chains drop everything.
func (a *Agent) fetchPod(ctx context.Context, att *attachment) {
	f, ok := a.cfg.Source.(source.PodFetcher)
	if !ok || att.api.Name == "" {
		return
	}
	ref := att.ref()
	go func() {
		fctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		if err := f.FetchPod(fctx, ref.Namespace, ref.Name); err != nil && ctx.Err() == nil {
			a.log.Warn("looking up an attached pod the policy source has not seen; it stays default-deny until the source has it",
				"pod", ref, "err", err)
		}
	}()
}
