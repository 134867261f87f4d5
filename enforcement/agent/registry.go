package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// attachment is one pod interface behind podwall's chains on this node.
type attachment struct {
	api agentapi.Attachment
	ips []netip.Addr
	// seq orders attachments by arrival: among several attachments of one
	// pod, the newest is the live one.
	seq uint64
}

func (a *attachment) ref() ruleset.Ref {
	ns := a.api.Namespace
	if ns == "" && a.api.Name != "" {
		ns = corev1.NamespaceDefault
	}
	return ruleset.Ref{Namespace: ns, Name: a.api.Name}
}

// parseAttachment validates what the plugin reports.
func parseAttachment(a agentapi.Attachment) (*attachment, error) {
	if err := policy.ValidateChainKey(a.Key); err != nil {
		return nil, err
	}
	switch dataplane.Layout(a.Layout) {
	case "", dataplane.LayoutBridge, dataplane.LayoutRouted:
	default:
		return nil, fmt.Errorf("layout %q, want %q or %q", a.Layout, dataplane.LayoutBridge, dataplane.LayoutRouted)
	}
	att := &attachment{api: a}
	for _, s := range a.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("pod IP %q is not an IP address", s)
		}
		att.ips = append(att.ips, ip.Unmap())
	}
	slices.SortFunc(att.ips, netip.Addr.Compare)
	att.ips = slices.Compact(att.ips)
	if err := dataplane.ValidatePod(att.pod()); err != nil {
		return nil, err
	}
	return att, nil
}

func fromKernel(p dataplane.Pod) *attachment {
	a := agentapi.Attachment{
		Key: p.Key, Network: p.Network, ContainerID: p.ContainerID, IfName: p.IfName,
		Namespace: p.Namespace, Name: p.Name, HostIface: p.HostIface, Layout: string(p.Layout), Bridge: p.Bridge,
	}
	ips := slices.Clone(p.IPs)
	slices.SortFunc(ips, netip.Addr.Compare)
	for _, ip := range ips {
		a.IPs = append(a.IPs, ip.String())
	}
	return &attachment{api: a, ips: ips}
}

// pod is the attachment as the dataplane writes it.
func (a *attachment) pod() dataplane.Pod {
	layout := dataplane.Layout(a.api.Layout)
	if layout == "" {
		layout = dataplane.LayoutBridge
	}
	return dataplane.Pod{
		Key: a.api.Key, Network: a.api.Network, ContainerID: a.api.ContainerID, IfName: a.api.IfName,
		Namespace: a.api.Namespace, Name: a.api.Name, IPs: a.ips, HostIface: a.api.HostIface, Layout: layout, Bridge: a.api.Bridge,
	}
}

// registry holds the attachments of this node, by chain key. Only the
// agent's loop touches it.
type registry struct {
	byKey   map[string]*attachment
	lastSeq uint64
}

func newRegistry() *registry { return &registry{byKey: map[string]*attachment{}} }

func (r *registry) put(a *attachment) {
	r.lastSeq++
	a.seq = r.lastSeq
	r.byKey[a.api.Key] = a
}

func (r *registry) remove(key string) { delete(r.byKey, key) }

// syncWith brings the registry in line with the attachments in the
// kernel: one found there that the registry lacks was installed by the
// plugin's fallback while the agent did not answer, and one the agent had
// written that is gone was removed by it (DEL or GC without the agent).
// Attachments not applied yet stay. It returns whether anything changed.
func (r *registry) syncWith(kernel []dataplane.Pod, applied map[string]uint64) bool {
	changed := false
	present := make(map[string]bool, len(kernel))
	for _, p := range kernel {
		present[p.Key] = true
		if _, ok := r.byKey[p.Key]; !ok && dataplane.ValidatePod(p) == nil {
			r.put(fromKernel(p))
			changed = true
		}
	}
	for key := range r.byKey {
		if _, wasApplied := applied[key]; wasApplied && !present[key] {
			delete(r.byKey, key)
			changed = true
		}
	}
	return changed
}

// pods lists the attachments as the dataplane writes them, sorted.
func (r *registry) pods() []dataplane.Pod {
	atts := r.sorted()
	out := make([]dataplane.Pod, len(atts))
	for i, a := range atts {
		out[i] = a.pod()
	}
	return out
}

// sorted returns the attachments by pod, then key.
func (r *registry) sorted() []*attachment {
	out := make([]*attachment, 0, len(r.byKey))
	for _, a := range r.byKey {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *attachment) int {
		return cmp.Or(cmp.Compare(a.api.Namespace, b.api.Namespace), cmp.Compare(a.api.Name, b.api.Name),
			cmp.Compare(a.api.Key, b.api.Key))
	})
	return out
}

// chainKeys assigns each attachment the pod identity its chains are
// compiled for. policy.Input holds one key per pod, so when a pod has
// several attachments (a sandbox recreated before the old one was
// deleted, or several interfaces) only the newest gets the pod's policy;
// the others get an identity no object has, so they drop everything. An
// attachment without a pod identity is handled the same way.
func (r *registry) chainKeys() (keys map[ruleset.Ref]string, primary map[ruleset.Ref]*attachment, problems []string) {
	keys = map[ruleset.Ref]string{}
	primary = map[ruleset.Ref]*attachment{}
	byRef := map[ruleset.Ref][]*attachment{}
	for _, a := range r.sorted() {
		if a.api.Name == "" {
			keys[ruleset.Ref{Namespace: "podwall-unknown", Name: "unnamed-" + a.api.Key}] = a.api.Key
			problems = append(problems, fmt.Sprintf("attachment %s has no pod name (CNI_ARGS K8S_POD_NAMESPACE/K8S_POD_NAME missing): it drops all traffic", a.api.Key))
			continue
		}
		byRef[a.ref()] = append(byRef[a.ref()], a)
	}
	for ref, atts := range byRef {
		newest := slices.MaxFunc(atts, func(a, b *attachment) int { return cmp.Compare(a.seq, b.seq) })
		keys[ref] = newest.api.Key
		primary[ref] = newest
		if len(atts) == 1 {
			continue
		}
		var others []string
		for _, a := range atts {
			if a != newest {
				others = append(others, a.api.Key)
				keys[ruleset.Ref{Namespace: ref.Namespace, Name: ref.Name + "~" + a.api.Key}] = a.api.Key
			}
		}
		problems = append(problems, fmt.Sprintf("pod %s has %d attachments: the newest (%s) gets its policy, the others (%s) drop all traffic",
			ref, len(atts), newest.api.Key, strings.Join(others, ", ")))
	}
	slices.Sort(problems)
	return keys, primary, problems
}

// changedSinceApply reports whether the attachments differ from those of
// the last apply.
func (r *registry) changedSinceApply(applied map[string]uint64) bool {
	if len(applied) != len(r.byKey) {
		return true
	}
	for key, a := range r.byKey {
		if seq, ok := applied[key]; !ok || seq != a.seq {
			return true
		}
	}
	return false
}
