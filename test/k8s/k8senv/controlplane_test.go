package k8senv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// The control plane answers the test through its namespace, a connected
// node reaches it with the kubeconfig it was given, and the API server
// comes back after a restart with its data.
func TestControlPlane(t *testing.T) {
	harness.CheckHostUnchanged(t)
	cp := k8senv.StartControlPlane(t)
	client := cp.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "probe", Labels: map[string]string{"team": "a"}}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}

	node := harness.NewNode(t)
	link := cp.ConnectNode(t, "node-a", node.NetNS())
	tools := k8senv.FindTools(t, false)
	out, err := node.Run(tools.Kubectl, "--kubeconfig", link.Kubeconfig, "get", "namespace", "probe", "-o", "jsonpath={.metadata.labels.team}")
	if err != nil || out != "a" {
		t.Fatalf("kubectl from the node namespace: got %q, %v; want a", out, err)
	}

	start := time.Now()
	if err := cp.StopAPIServer(); err != nil {
		t.Fatalf("stopping the API server: %v", err)
	}
	if _, err := client.CoreV1().Namespaces().Get(ctx, "probe", metav1.GetOptions{}); err == nil {
		t.Fatal("the API server still answers after StopAPIServer")
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("restarting the API server: %v", err)
	}
	t.Logf("API server stop and restart took %v", time.Since(start).Round(time.Millisecond))
	got, err := client.CoreV1().Namespaces().Get(ctx, "probe", metav1.GetOptions{})
	if err != nil || got.Labels["team"] != "a" {
		t.Fatalf("namespace after restart: %v, %v", got, err)
	}
	if out, err := cp.Kubectl(ctx, nil, "get", "namespaces", "-o", "name"); err != nil || !strings.Contains(out, "namespace/probe") {
		t.Fatalf("kubectl in the control namespace: %q, %v", out, err)
	}
}
