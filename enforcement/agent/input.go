package agent

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/source"
)

// buildInput combines the source's objects with the local attachments. The
// IPs of a local pod are the ones the plugin reported: they are what the
// kernel sees, whatever the manifest says. Pods without an attachment are
// peers with the IPs their manifest gives.
func buildInput(objs source.Objects, reg *registry, mode policy.Mode, node string) (policy.Input, []string) {
	keys, primary, problems := reg.chainKeys()
	pods := make([]corev1.Pod, len(objs.Pods))
	for i, p := range objs.Pods {
		ref := policy.Ref{Namespace: p.Namespace, Name: p.Name}
		if ref.Namespace == "" {
			ref.Namespace = corev1.NamespaceDefault
		}
		if a := primary[ref]; a != nil {
			// A shallow copy: only the replaced fields differ, the
			// snapshot's own slices are never written.
			p.Status.PodIPs = make([]corev1.PodIP, len(a.ips))
			p.Status.PodIP = ""
			for j, ip := range a.ips {
				p.Status.PodIPs[j] = corev1.PodIP{IP: ip.String()}
			}
			if len(a.ips) > 0 {
				p.Status.PodIP = a.ips[0].String()
			}
		}
		pods[i] = p
	}
	return policy.Input{
		Namespaces: objs.Namespaces,
		Pods:       pods,
		Policies:   objs.Policies,
		Node:       node,
		Mode:       mode,
		ChainKeys:  keys,
	}, problems
}
