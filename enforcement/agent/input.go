package agent

import (
	"net/netip"
	"slices"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// inputBuilder combines the source's objects with the local attachments,
// and records in a change set what the attachments changed since the
// last input it built: the source reports its own objects' changes, the
// agent those of what it adds.
type inputBuilder struct {
	// keys and podIPs are those of the last input built.
	keys   map[ruleset.Ref]string
	podIPs map[ruleset.Ref][]netip.Addr
}

// build returns the compiler's input. The IPs of a local pod are the ones
// the plugin reported: they are what the kernel sees, whatever the
// manifest says. Pods without an attachment are peers with the IPs their
// manifest gives.
func (b *inputBuilder) build(objs source.Objects, reg *registry, mode policy.Mode, node string, ch *changes.Set) (policy.Input, []string) {
	keys, primary, problems := reg.chainKeys()
	podIPs := make(map[ruleset.Ref][]netip.Addr, len(primary))
	for ref, a := range primary {
		podIPs[ref] = a.ips
	}
	b.record(keys, podIPs, ch)
	return policy.Input{
		Namespaces: objs.Namespaces,
		Pods:       objs.Pods,
		Policies:   objs.Policies,
		Node:       node,
		Mode:       mode,
		ChainKeys:  keys,
		PodIPs:     podIPs,
	}, problems
}

// record notes every pod whose chain key or reported addresses differ
// from the last input's.
func (b *inputBuilder) record(keys map[ruleset.Ref]string, podIPs map[ruleset.Ref][]netip.Addr, ch *changes.Set) {
	recordDifferences(b.keys, keys, func(a, b string) bool { return a == b }, ch)
	recordDifferences(b.podIPs, podIPs, slices.Equal, ch)
	b.keys, b.podIPs = keys, podIPs
}

func recordDifferences[V any](old, now map[ruleset.Ref]V, equal func(V, V) bool, ch *changes.Set) {
	for ref, v := range now {
		if w, ok := old[ref]; !ok || !equal(v, w) {
			ch.Attachment(ref)
		}
	}
	for ref := range old {
		if _, ok := now[ref]; !ok {
			ch.Attachment(ref)
		}
	}
}
