package source

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stripForCompiler is the informers' transform: it keeps of each object
// only what the policy compiler, Resync and the node's pod CIDRs need, so
// that 5,000 pods cost little memory and a snapshot copies little. Among
// what goes: managedFields, annotations (kubectl's last-applied copy of a
// policy), owner references, and of pods everything but labels, node,
// host-network flag, named container ports, phase and IPs.
func stripForCompiler(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return stripPod(o), nil
	case *corev1.Namespace:
		return &corev1.Namespace{TypeMeta: o.TypeMeta, ObjectMeta: stripMeta(o.ObjectMeta)}, nil
	case *networkingv1.NetworkPolicy:
		return &networkingv1.NetworkPolicy{TypeMeta: o.TypeMeta, ObjectMeta: stripMeta(o.ObjectMeta), Spec: o.Spec}, nil
	case *corev1.Node:
		return &corev1.Node{TypeMeta: o.TypeMeta, ObjectMeta: stripMeta(o.ObjectMeta),
			Spec: corev1.NodeSpec{PodCIDR: o.Spec.PodCIDR, PodCIDRs: o.Spec.PodCIDRs}}, nil
	}
	// Tombstones (cache.DeletedFinalStateUnknown) and anything else pass.
	return obj, nil
}

func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, DeletionTimestamp: m.DeletionTimestamp,
	}
}

func stripPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: stripMeta(p.ObjectMeta),
		Spec:       corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, c := range p.Spec.Containers {
		var ports []corev1.ContainerPort
		for _, cp := range c.Ports {
			// Only named ports are looked up; unnamed ones mean nothing
			// to a NetworkPolicy.
			if cp.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol})
			}
		}
		if len(ports) > 0 {
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: ports})
		}
	}
	return out
}

// samePodForCompiler reports whether an update changed nothing the
// compiler reads: the kubelet's status churn (conditions, container
// states) then costs no recompile.
func samePodForCompiler(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*corev1.Pod)
	n, ok2 := newObj.(*corev1.Pod)
	if !ok1 || !ok2 {
		return false
	}
	return o.Namespace == n.Namespace && o.Name == n.Name && o.UID == n.UID &&
		o.Spec.NodeName == n.Spec.NodeName && o.Spec.HostNetwork == n.Spec.HostNetwork &&
		o.Status.Phase == n.Status.Phase && o.Status.PodIP == n.Status.PodIP &&
		slices.Equal(o.Status.PodIPs, n.Status.PodIPs) &&
		mapsEqual(o.Labels, n.Labels) &&
		slices.EqualFunc(o.Spec.Containers, n.Spec.Containers, func(a, b corev1.Container) bool {
			return slices.Equal(a.Ports, b.Ports)
		})
}

// sameNamespaceForCompiler reports whether an update changed nothing the
// compiler reads of a Namespace: its labels.
func sameNamespaceForCompiler(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*corev1.Namespace)
	n, ok2 := newObj.(*corev1.Namespace)
	return ok1 && ok2 && o.Name == n.Name && o.UID == n.UID && mapsEqual(o.Labels, n.Labels)
}

// samePolicyForCompiler reports whether an update changed nothing the
// compiler reads of a NetworkPolicy: its spec.
func samePolicyForCompiler(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*networkingv1.NetworkPolicy)
	n, ok2 := newObj.(*networkingv1.NetworkPolicy)
	return ok1 && ok2 && o.Namespace == n.Namespace && o.Name == n.Name && o.UID == n.UID &&
		apiequality.Semantic.DeepEqual(o.Spec, n.Spec)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func objectMeta(obj any) (metav1.Object, error) { return apimeta.Accessor(obj) }
