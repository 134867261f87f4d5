package source

import "context"

// PodFetcher is implemented by sources that can look a pod up directly at
// its origin, for the watch lag: the plugin may attach a pod before the
// source has seen it. FetchPod returns once the pod is in the snapshot
// (Changes is signalled then), at once if it already was, or once the
// origin says it does not exist; until then the pod stays default-deny.
// The agent calls it off its loop for every attachment it is told of.
type PodFetcher interface {
	FetchPod(ctx context.Context, namespace, name string) error
}
