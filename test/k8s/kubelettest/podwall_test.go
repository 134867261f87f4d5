package kubelettest

import (
	"context"
	"net"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// Pods the kubelet creates through install.sh's chain get addresses from
// the Node's podCIDR (podwall-ipam "node" ranges) and start default-deny;
// a NetworkPolicy applied through the API opens exactly its port once
// podwallctl wait returns, and deleting it closes the port again.
func TestPodwallOnKubelet(t *testing.T) {
	harness.CheckHostUnchanged(t)
	cp := k8senv.StartControlPlane(t)
	client := cp.Clientset(t)
	const podCIDR = "10.244.9.0/24"
	node := cp.StartKubeletNode(t, k8senv.NodeOptions{PodCIDR: podCIDR})
	podwall := node.InstallPodwall(t, k8senv.PodwallOptions{DefaultPolicy: "deny"})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := k8senv.CreateNamespace(ctx, client, "x", map[string]string{"ns": "x"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pods := k8senv.MustCreatePods(t, client,
		node.PausePod("x", "a", map[string]string{"pod": "a"}, 80, 81),
		node.PausePod("x", "b", map[string]string{"pod": "b"}, 80, 81))
	t.Logf("two pods created to Ready with podwall: %v", time.Since(start).Round(time.Millisecond))
	_, cidr, _ := net.ParseCIDR(podCIDR)
	for _, pod := range pods {
		if !cidr.Contains(net.ParseIP(pod.Status.PodIP)) {
			t.Errorf("pod %s has address %s outside the Node's podCIDR %s", pod.Name, pod.Status.PodIP, podCIDR)
		}
	}
	a, b := node.PodNetNS(t, pods[0]), node.PodNetNS(t, pods[1])
	a.ServeTCP(t, 80)
	a.ServeTCP(t, 81)
	probe := func(port string) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := b.ConnectTCP(ctx, net.JoinHostPort(a.IP, port))
		return err
	}
	if err := podwall.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"80", "81"} {
		if probe(port) == nil {
			t.Errorf("x/b -> x/a:%s connected with no policy in deny mode", port)
		}
	}

	port80 := intstr.FromInt32(80)
	policy := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-to-a-80"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port80}},
			}},
		},
	}
	// In deny mode egress needs allowing too.
	egress := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{}},
		},
	}
	start = time.Now()
	for _, np := range []*networkingv1.NetworkPolicy{policy, egress} {
		if _, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := podwall.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("policy create to enforced (podwallctl wait): %v", time.Since(start).Round(time.Millisecond))
	if err := probe("80"); err != nil {
		t.Errorf("x/b -> x/a:80 allowed by policy: %v", err)
	}
	if probe("81") == nil {
		t.Error("x/b -> x/a:81 connected; the policy allows port 80 only")
	}

	if err := client.NetworkingV1().NetworkPolicies("x").Delete(ctx, policy.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := podwall.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if probe("80") == nil {
		t.Error("x/b -> x/a:80 still connects after the policy was deleted")
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", podwall.AgentLog(40))
	}
}
