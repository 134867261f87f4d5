// Package source provides the cluster objects the agent enforces: the
// Namespaces, Pods and NetworkPolicies that the policy compiler reads. Both
// origins (a directory of manifests, Dir, and a Kubernetes API server's
// informers, Kube) sit behind the Source interface, so the agent does not
// care where they come from. Each also tracks which objects changed
// between snapshots, so that the compiler derives anew only what they
// touch.
package source

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/changes"
)

// Source is a changing set of cluster objects.
type Source interface {
	// Run watches the origin until ctx ends, signalling Changes whenever
	// what Snapshot returns may have changed.
	Run(ctx context.Context) error
	// Snapshot returns the objects as last read, and the names of those
	// that changed since the previous Snapshot: a Source hands each change
	// out once, so it has one consumer (the agent). The changes are
	// unknown at the first Snapshot and whenever the source is in doubt (a
	// read after a failed one, a relist). Its error reports that the last
	// read failed; the objects are then those of the last good read, so
	// that a transient failure never drops enforcement to nothing. Until a
	// first complete read it returns ErrNotSynced, and the agent applies
	// nothing: enforcing a partial view could open or close pods that the
	// full one treats otherwise.
	Snapshot() (Objects, changes.Set, error)
	// Changes receives a value after the objects changed. It is buffered
	// by one: a burst of changes is one notification.
	Changes() <-chan struct{}
	// Resync reads the origin now and returns once Snapshot reflects every
	// change made before the call.
	Resync(ctx context.Context) error
}

// ErrNotSynced is returned by a Source that has not read its origin
// completely yet.
var ErrNotSynced = errors.New("policy source has not been read completely yet")

// Objects is one consistent view of the cluster.
type Objects struct {
	Namespaces []corev1.Namespace
	Pods       []corev1.Pod
	Policies   []networkingv1.NetworkPolicy
	// Problems are the manifests that were skipped or replaced, and why.
	Problems []Problem
}

// Problem reports one manifest that could not be used as written.
type Problem struct {
	File string
	// Index is the 0-based position of the document in the file; for
	// items of a List, of the List.
	Index     int
	Kind      string
	Namespace string
	Name      string
	Err       error
}

func (p Problem) Error() string {
	obj := p.Kind
	if p.Name != "" {
		ref := p.Name
		if p.Namespace != "" {
			ref = p.Namespace + "/" + p.Name
		}
		obj = fmt.Sprintf("%s %s", p.Kind, ref)
	}
	if obj == "" {
		return fmt.Sprintf("%s: document %d: %v", p.File, p.Index, p.Err)
	}
	return fmt.Sprintf("%s: document %d (%s): %v", p.File, p.Index, obj, p.Err)
}

func (p Problem) Unwrap() error { return p.Err }
