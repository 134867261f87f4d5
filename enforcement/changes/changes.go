// Package changes records which cluster objects changed between two
// compilations, the way kube-proxy's change trackers do: whoever sees an
// object change (the policy source, the agent for its attachments) records
// its name, and the compile cache, which consumes the set, derives anew
// only what those objects touch.
//
// A Set either lists what changed or says that it does not know
// ("rebuild"). The zero Set does not know: a consumer that receives one it
// did not expect rebuilds everything, so forgetting to track is slow, not
// wrong. Any doubt (a first read, a read after an error, a relist) is
// recorded as Rebuild, and only that.
package changes

import (
	"maps"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// defaultNamespace is what an object without a namespace belongs to.
const defaultNamespace = "default"

// Set is the names of the objects that changed (were added, updated or
// removed) since its consumer last took one.
type Set struct {
	// known is false while the changes are unknown: everything must be
	// derived anew.
	known bool
	// The maps are nil until something is recorded.
	namespaces  map[string]struct{}
	pods        map[ruleset.Ref]struct{}
	policies    map[ruleset.Ref]struct{}
	attachments map[ruleset.Ref]struct{}
}

// None is a Set that knows nothing changed.
func None() Set { return Set{known: true} }

// Rebuild is a Set that does not know what changed; so is the zero Set.
func Rebuild() Set { return Set{} }

// Unknown reports whether the changes are unknown, so that everything must
// be derived anew.
func (s *Set) Unknown() bool { return !s.known }

// MarkUnknown forgets what was recorded: everything must be derived anew.
func (s *Set) MarkUnknown() { *s = Set{} }

// Empty reports whether nothing changed, as far as the set knows.
func (s *Set) Empty() bool {
	return s.known && len(s.namespaces)+len(s.pods)+len(s.policies)+len(s.attachments) == 0
}

// Namespace records that the Namespace of that name changed.
func (s *Set) Namespace(name string) {
	if s.known {
		s.namespaces = add(s.namespaces, name)
	}
}

// Pod records that the Pod changed: its labels, addresses, node, phase,
// named ports, or whether it exists.
func (s *Set) Pod(namespace, name string) {
	if s.known {
		s.pods = add(s.pods, ref(namespace, name))
	}
}

// Policy records that the NetworkPolicy changed.
func (s *Set) Policy(namespace, name string) {
	if s.known {
		s.policies = add(s.policies, ref(namespace, name))
	}
}

// Attachment records that what this node knows of the pod's attachment
// changed: the chain key it is enforced under, or the addresses the plugin
// reported for it, which replace the ones its Pod object gives.
func (s *Set) Attachment(pod ruleset.Ref) {
	if s.known {
		s.attachments = add(s.attachments, ref(pod.Namespace, pod.Name))
	}
}

// Merge records in s everything o records.
func (s *Set) Merge(o Set) {
	if !s.known || !o.known {
		s.MarkUnknown()
		return
	}
	s.namespaces = union(s.namespaces, o.namespaces)
	s.pods = union(s.pods, o.pods)
	s.policies = union(s.policies, o.policies)
	s.attachments = union(s.attachments, o.attachments)
}

// Namespaces returns the names of the changed Namespaces (do not modify).
func (s *Set) Namespaces() map[string]struct{} { return s.namespaces }

// Pods returns the changed Pods (do not modify).
func (s *Set) Pods() map[ruleset.Ref]struct{} { return s.pods }

// Policies returns the changed NetworkPolicies (do not modify).
func (s *Set) Policies() map[ruleset.Ref]struct{} { return s.policies }

// Attachments returns the pods whose attachment changed (do not modify).
func (s *Set) Attachments() map[ruleset.Ref]struct{} { return s.attachments }

func ref(namespace, name string) ruleset.Ref {
	if namespace == "" {
		namespace = defaultNamespace
	}
	return ruleset.Ref{Namespace: namespace, Name: name}
}

func add[K comparable](m map[K]struct{}, k K) map[K]struct{} {
	if m == nil {
		m = map[K]struct{}{}
	}
	m[k] = struct{}{}
	return m
}

// union adds b to a, which it may return or copy: a Set never shares a
// map with another one, since the maps are written.
func union[K comparable](a, b map[K]struct{}) map[K]struct{} {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		return maps.Clone(b)
	}
	maps.Copy(a, b)
	return a
}
