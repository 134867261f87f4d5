package k8senv_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// The real kubelet path with the reference plugins (bridge + host-local):
// the node goes Ready, two pods get addresses from the node's range, and a
// TCP probe between their namespaces goes through.
func TestKubeletNodeWithReferencePlugins(t *testing.T) {
	harness.CheckHostUnchanged(t)
	cp := k8senv.StartControlPlane(t)
	client := cp.Clientset(t)
	const podCIDR = "10.244.7.0/24"
	start := time.Now()
	node := cp.StartKubeletNode(t, k8senv.NodeOptions{
		PodCIDR:  podCIDR,
		Conflist: k8senv.ReferenceConflist,
	})
	t.Logf("bring-up to node Ready: %v", time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k8senv.CreateNamespace(ctx, client, "smoke", nil); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	pods := k8senv.MustCreatePods(t, client,
		node.PausePod("smoke", "server", map[string]string{"app": "server"}, 80, 81),
		node.PausePod("smoke", "client", map[string]string{"app": "client"}))
	t.Logf("two pods created to Ready: %v", time.Since(start).Round(time.Millisecond))

	_, cidr, _ := net.ParseCIDR(podCIDR)
	for _, pod := range pods {
		if !cidr.Contains(net.ParseIP(pod.Status.PodIP)) {
			t.Errorf("pod %s has address %s outside the node's range %s", pod.Name, pod.Status.PodIP, podCIDR)
		}
	}
	server, client0 := node.PodNetNS(t, pods[0]), node.PodNetNS(t, pods[1])
	server.ServeTCP(t, 80)
	got, err := client0.ConnectTCP(ctx, net.JoinHostPort(server.IP, "80"))
	if err != nil || got != "smoke/server" {
		t.Fatalf("client -> server:80: got %q, %v; want smoke/server", got, err)
	}
}
