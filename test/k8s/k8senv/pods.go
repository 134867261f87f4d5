package k8senv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PausePod returns a pod for this node that runs the pause image, with the
// given labels and TCP container ports declared (ports matter to named
// ports in NetworkPolicies; the test serves them itself in the pod's
// namespace, see PodNetNS). It carries no ServiceAccount token.
func (n *KubeletNode) PausePod(namespace, name string, labels map[string]string, tcpPorts ...int32) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, port := range tcpPorts {
		ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d", port), ContainerPort: port, Protocol: corev1.ProtocolTCP})
	}
	grace := int64(1)
	automount := false
	enableServiceLinks := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name, // there is no scheduler
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  &automount,
			EnableServiceLinks:            &enableServiceLinks,
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           PauseImage,
				ImagePullPolicy: corev1.PullNever,
				Ports:           ports,
			}},
		},
	}
}

// CreatePods creates the pods and waits until every one is Ready, returning
// them as the API server then has them (with status.podIP).
func CreatePods(ctx context.Context, client kubernetes.Interface, pods ...*corev1.Pod) ([]*corev1.Pod, error) {
	for _, pod := range pods {
		if _, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	ready := make([]*corev1.Pod, len(pods))
	for i, pod := range pods {
		var err error
		if ready[i], err = WaitPodReady(ctx, client, pod.Namespace, pod.Name); err != nil {
			return nil, err
		}
	}
	return ready, nil
}

// WaitPodReady waits until the pod is Ready and has an address.
func WaitPodReady(ctx context.Context, client kubernetes.Interface, namespace, name string) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := poll(ctx, fmt.Sprintf("pod %s/%s Ready", namespace, name), noFatal, func() error {
		var err error
		pod, err = client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.PodIP == "" {
			return fmt.Errorf("phase %s, no address yet%s", pod.Status.Phase, waitingReasons(pod))
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("phase %s, not Ready%s", pod.Status.Phase, waitingReasons(pod))
	})
	return pod, err
}

// CreateNamespace creates a namespace with labels. No ServiceAccount is
// needed in it (see ControlPlane).
func CreateNamespace(ctx context.Context, client kubernetes.Interface, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// MustCreatePods is CreatePods failing the test, with a two-minute bound.
func MustCreatePods(t testing.TB, client kubernetes.Interface, pods ...*corev1.Pod) []*corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ready, err := CreatePods(ctx, client, pods...)
	if err != nil {
		t.Fatal(err)
	}
	return ready
}

// waitingReasons tells why a pod's containers are not running yet, e.g.
// a sandbox the CNI plugin refused.
func waitingReasons(pod *corev1.Pod) string {
	var out string
	for _, s := range pod.Status.ContainerStatuses {
		if s.State.Waiting != nil {
			out += fmt.Sprintf("; %s waiting: %s %s", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message)
		}
	}
	return out
}

func noFatal() error { return nil }

var errNoPodNetNS = errors.New("no pod network namespace holds that address")
