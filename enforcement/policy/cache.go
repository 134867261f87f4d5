package policy

import (
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// Cache keeps what the last compilation through it derived (the indexed
// cluster, the parsed policies, the pods each peer selects, the members
// of each set and each attachment's chains) and, told what changed since,
// derives anew only what the changes touch:
//
//   - a changed pod is replaced in the index and in the selections, and
//     the sets whose selection it enters or leaves are filled again;
//   - a changed namespace is replaced, and every selection and set made
//     again (a namespace's labels move whole namespaces in and out);
//   - a changed policy is parsed again;
//   - an attachment is compiled again when a pod it claims changed, or a
//     policy of its namespace did: its chains depend on nothing else (its
//     pod's labels, addresses and ports, which policies select it, and
//     the names of the sets its rules match, never their members).
//
// The output is what Compile gives for the same input, provided the
// changes name every object that differs from the last compilation's
// input; when they do not know (changes.Set.Unknown), or the mode
// differs, or the last compilation saw an object listed twice, or failed,
// everything is derived anew. Compilations through one Cache return
// Desired values that share slices (rules, set members): treat them as
// read-only.
//
// A Cache is safe for concurrent use, though compilations through it are
// serialised.
type Cache struct {
	mu sync.Mutex
	// last is what the last compilation derived; nil when there is
	// nothing to build on.
	last *compiler
}

// NewCache returns an empty cache: its first compilation derives
// everything.
func NewCache() *Cache { return &Cache{} }

// Compile compiles in as the package's Compile does, with ch naming what
// changed since the previous compilation through the cache.
func (k *Cache) Compile(in Input, ch changes.Set) (*ruleset.Desired, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	mode, err := ParseMode(string(in.Mode))
	if err != nil {
		return nil, err
	}
	var recompile func(attachment) bool
	if k.last != nil && !ch.Unknown() && k.last.mode == mode {
		recompile = k.last.patch(in, ch)
	}
	if recompile == nil {
		if k.last, err = newCompiler(in); err != nil {
			return nil, err
		}
	}
	d, err := k.last.compile(in, recompile)
	if err != nil {
		// What it holds is half of two compilations.
		k.last = nil
		return nil, err
	}
	return d, nil
}

// patch applies the changes and returns which attachments must be
// compiled again, or nil when the changes cannot be patched in (an object
// listed twice, now or at the last compilation).
func (c *compiler) patch(in Input, ch changes.Set) func(attachment) bool {
	if len(c.cluster.duplicates) > 0 || len(c.policies.duplicates) > 0 {
		return nil
	}
	if len(ch.Namespaces()) > 0 {
		found, ok := findChanged(in.Namespaces, ch.Namespaces(), func(ns *corev1.Namespace) string { return ns.Name })
		if !ok {
			return nil
		}
		for name := range ch.Namespaces() {
			c.cluster.setNamespace(name, found[name])
		}
		// A namespace's labels move all its pods in or out of selections.
		clear(c.selections)
		clear(c.members)
	}

	changedPods := map[ruleset.Ref]bool{}
	if len(ch.Pods()) > 0 {
		found, ok := findChanged(in.Pods, ch.Pods(), podRef)
		if !ok {
			return nil
		}
		for ref := range ch.Pods() {
			var now *podInfo
			if pod := found[ref]; pod != nil {
				now = newPodInfo(pod).withIPs(in.PodIPs, ref)
			}
			c.replacePod(ref, now)
			changedPods[ref] = true
		}
	}
	// An attachment's addresses replace those of its pod's status.
	for ref := range ch.Attachments() {
		if old := c.cluster.byRef[ref]; old != nil && !changedPods[ref] {
			c.replacePod(ref, old.withIPs(in.PodIPs, ref))
		}
		changedPods[ref] = true
	}

	changedPolicies := map[string]bool{}
	if len(ch.Policies()) > 0 {
		found, ok := findChanged(in.Policies, ch.Policies(), policyRef)
		if !ok {
			return nil
		}
		for ref := range ch.Policies() {
			c.policies.replace(ref, found[ref])
			changedPolicies[ref.Namespace] = true
		}
	}
	return func(att attachment) bool {
		for _, ref := range att.refs {
			if changedPods[ref] || changedPolicies[ref.Namespace] {
				return true
			}
		}
		return false
	}
}

// findChanged finds the changed objects among all, by key; ok is false
// when one is listed twice.
func findChanged[T any, K comparable](all []T, changed map[K]struct{}, key func(*T) K) (found map[K]*T, ok bool) {
	found = make(map[K]*T, len(changed))
	for i := range all {
		k := key(&all[i])
		if _, ok := changed[k]; !ok {
			continue
		}
		if _, dup := found[k]; dup {
			return nil, false
		}
		found[k] = &all[i]
	}
	return found, true
}

// replacePod puts now (nil: no pod) in the place of the pod of that ref,
// in the index and in every selection, and forgets the members of the
// sets whose selection it leaves, enters or changes in.
func (c *compiler) replacePod(ref ruleset.Ref, now *podInfo) {
	c.cluster.replacePod(ref, now)
	for key, s := range c.selections {
		var selected *podInfo
		if now != nil && c.cluster.selects(s.peer, now) {
			selected = now
		}
		var was bool
		if s.pods, was = replaceSorted(s.pods, ref, selected); !was && selected == nil {
			continue
		}
		for name, m := range c.members {
			if m.selection == key {
				delete(c.members, name)
			}
		}
	}
}
