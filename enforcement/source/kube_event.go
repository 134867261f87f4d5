package source

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// eventComponent is the source component of the Events the agent posts.
const eventComponent = "podwall-agent"

// NodeEvent posts an Event about this node, as the kubelet does (in the
// default namespace, involving the Node). It only creates: the agent's
// RBAC grants create on events and nothing more, so repeats are new Events
// rather than patched counts; callers post on a change, not on every check.
func (k *Kube) NodeEvent(ctx context.Context, eventType, reason, message string) error {
	// The kubelet puts the node's name as its UID in node events; `kubectl
	// describe node` matches either.
	ref := corev1.ObjectReference{Kind: "Node", Name: k.node, APIVersion: "v1", UID: types.UID(k.node)}
	if n := k.Node(); n != nil && n.UID != "" {
		ref.UID = n.UID
	}
	host, _ := os.Hostname()
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: k.node + ".", Namespace: corev1.NamespaceDefault},
		InvolvedObject:      ref,
		Reason:              reason,
		Message:             message,
		Type:                eventType,
		Source:              corev1.EventSource{Component: eventComponent, Host: host},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "podwall.io/agent",
		ReportingInstance:   eventComponent + "-" + k.node,
	}
	if _, err := k.client.CoreV1().Events(corev1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("posting %s event for node %s: %w", reason, k.node, err)
	}
	return nil
}
