package synthetic

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Object is the Pod as the API would serve it: labels, node, container
// ports and, when withIPs, its addresses in status.
func (p Pod) Object(withIPs bool) corev1.Pod {
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec:       corev1.PodSpec{NodeName: p.Node},
	}
	for i, cp := range p.Ports {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: fmt.Sprintf("c%d", i), Image: "app", Ports: []corev1.ContainerPort{cp},
		})
	}
	if !withIPs {
		return pod
	}
	pod.Status.Phase = corev1.PodRunning
	for _, a := range []netip.Addr{p.V4, p.V6} {
		if a.IsValid() {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
	}
	if len(pod.Status.PodIPs) > 0 {
		pod.Status.PodIP = pod.Status.PodIPs[0].IP
	}
	return pod
}

// Namespace is namespace i as the API would serve it.
func Namespace(i int) corev1.Namespace {
	return corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: NamespaceName(i), Labels: NamespaceLabels(i)},
	}
}

// WriteDir writes the cluster as manifests into dir: namespaces.yaml,
// pods.yaml and policies.yaml. Pods on LocalNode are written without
// addresses (the agent learns those from the plugin); remote pods carry
// theirs, as peers.
func WriteDir(dir string, nNS int, pods []Pod, policies []networkingv1.NetworkPolicy) error {
	var ns, pb, pol bytes.Buffer
	for i := range nNS {
		if err := AppendYAML(&ns, Namespace(i)); err != nil {
			return err
		}
	}
	for _, p := range pods {
		if err := AppendYAML(&pb, p.Object(!p.Local())); err != nil {
			return err
		}
	}
	for _, np := range policies {
		if err := AppendYAML(&pol, np); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"namespaces.yaml", ns.Bytes()}, {"pods.yaml", pb.Bytes()}, {"policies.yaml", pol.Bytes()}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", f.name, err)
		}
	}
	return nil
}

// AppendYAML appends obj to b as one YAML document.
func AppendYAML(b *bytes.Buffer, obj any) error {
	y, err := yaml.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", obj, err)
	}
	b.WriteString("---\n")
	b.Write(y)
	return nil
}
