package migrate

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/ipam/report"
)

// listPageSize bounds each list call on a node with many pods.
const listPageSize = 500

// NodePods lists the pods bound to node, page by page.
func NodePods(ctx context.Context, client kubernetes.Interface, node string) ([]report.Pod, error) {
	opts := metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
		Limit:         listPageSize,
	}
	var out []report.Pod
	for {
		list, err := client.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing the pods of node %s: %w", node, err)
		}
		for i := range list.Items {
			// The server filters already; this guards a server (or fake)
			// that ignores the selector from evicting other nodes' pods.
			if list.Items[i].Spec.NodeName == node {
				out = append(out, podOf(&list.Items[i]))
			}
		}
		if list.Continue == "" {
			return out, nil
		}
		opts.Continue = list.Continue
	}
}

func podOf(p *corev1.Pod) report.Pod {
	pod := report.Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		UID:         string(p.UID),
		HostNetwork: p.Spec.HostNetwork,
		Finished:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		Terminating: p.DeletionTimestamp != nil,
		Controlled:  metav1.GetControllerOf(p) != nil,
	}
	_, pod.Mirror = p.Annotations[corev1.MirrorPodAnnotationKey]
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		// An address the API holds but that does not parse is no address
		// of ours: it cannot be in a range.
		if addr, err := netip.ParseAddr(ip.IP); err == nil {
			pod.IPs = append(pod.IPs, addr)
		}
	}
	return pod
}
