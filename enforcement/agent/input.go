package agent

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// buildInput combines the source's objects with the local attachments. The
// IPs of a local pod are the ones the plugin reported: they are what the
// kernel sees, whatever the manifest says. Pods without an attachment are
// peers with the IPs their manifest gives.
func buildInput(objs source.Objects, reg *registry, mode policy.Mode, node string, memo *podsMemo) (policy.Input, []string) {
	keys, primary, problems := reg.chainKeys()
	return policy.Input{
		Namespaces: objs.Namespaces,
		Pods:       memo.pods(objs.Pods, primary),
		Policies:   objs.Policies,
		Node:       node,
		Mode:       mode,
		ChainKeys:  keys,
	}, problems
}

// podsMemo keeps the pods buildInput made last. A source returns the same
// slice from Snapshot until its objects change, and most attachments
// replace no pod's addresses or the same ones as before (a pod's ADD on a
// node at scale): then the last slice is the answer, and the thousands of
// pods are not copied again.
type podsMemo struct {
	src []corev1.Pod // the source's slice the pods were made from
	// at lists the positions of each pod in src.
	at map[ruleset.Ref][]int
	// replaced holds the addresses put in at each position.
	replaced map[int][]netip.Addr
	out      []corev1.Pod
}

// pods returns src with the addresses of the attached pods replaced.
func (m *podsMemo) pods(src []corev1.Pod, primary map[ruleset.Ref]*attachment) []corev1.Pod {
	if !sameSlice(src, m.src) {
		m.src, m.out, m.replaced = src, nil, nil
		m.at = make(map[ruleset.Ref][]int, len(src))
		for i := range src {
			ref := ruleset.Ref{Namespace: src[i].Namespace, Name: src[i].Name}
			if ref.Namespace == "" {
				ref.Namespace = corev1.NamespaceDefault
			}
			m.at[ref] = append(m.at[ref], i)
		}
	}
	replaced := map[int][]netip.Addr{}
	for ref, a := range primary {
		for _, i := range m.at[ref] {
			replaced[i] = a.ips
		}
	}
	if m.out != nil && sameReplacements(replaced, m.replaced) {
		return m.out
	}
	if len(replaced) == 0 {
		m.out, m.replaced = src, replaced
		return src
	}
	// A shallow copy: only the replaced fields differ, the snapshot's own
	// slices are never written.
	out := slices.Clone(src)
	for i, ips := range replaced {
		p := &out[i]
		p.Status.PodIPs = make([]corev1.PodIP, len(ips))
		p.Status.PodIP = ""
		for j, ip := range ips {
			p.Status.PodIPs[j] = corev1.PodIP{IP: ip.String()}
		}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0].String()
		}
	}
	m.out, m.replaced = out, replaced
	return out
}

func sameSlice(a, b []corev1.Pod) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func sameReplacements(a, b map[int][]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i, ips := range a {
		if other, ok := b[i]; !ok || !slices.Equal(ips, other) {
			return false
		}
	}
	return true
}
