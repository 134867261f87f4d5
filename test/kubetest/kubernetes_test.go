package kubetest

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podwall/podwall/enforcement/nodecidrs"
)

// allowIngress lets pods labelled app=<from> in namespaces labelled
// team=<fromTeam> into pods labelled app=<to>, on the greeting port.
func allowIngress(ns, name, to, fromTeam, from string) *networkingv1.NetworkPolicy {
	port := intstr.FromInt32(servePort)
	tcp := corev1.ProtocolTCP
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": to}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fromTeam}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

// allowAllEgress lets every pod of ns send anywhere.
func allowAllEgress(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "egress-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{}},
		},
	}
}

// TestKubernetesMode: two nodes, each with its own agent against one API
// server, pods behind each, traffic between them through the control
// namespace. Ingress is enforced on the destination's node, egress on the
// source's, through policy creates, updates and deletes and label changes;
// then the watch lag, the API server going away and coming back, and the
// node's pod CIDRs.
func TestKubernetesMode(t *testing.T) {
	c := newCluster(t)
	n1 := c.addNode("node-1", "10.244.1.0/24", true)
	n2 := c.addNode("node-2", "10.244.2.0/24", false)
	c.namespace("x", map[string]string{"team": "x"})
	c.namespace("y", map[string]string{"team": "y"})
	for _, n := range c.nodes {
		n.startAgent("deny")
	}
	for _, n := range c.nodes {
		n.waitReady()
	}

	web := n1.attach("x", "web")
	n1.register(web, map[string]string{"app": "web"})
	client := n2.attach("y", "client")
	n2.register(client, map[string]string{"app": "client"})
	other := n2.attach("y", "other")
	n2.register(other, map[string]string{"app": "other"})
	c.waitAll()

	ctx := ctxFor(t, 10*time.Minute)
	pols := c.client.NetworkingV1()
	var waits []time.Duration

	t.Run("policies across nodes", func(t *testing.T) {
		// Deny mode, no policy: nothing passes, either way.
		denied(t, client, web)
		denied(t, other, web)
		denied(t, web, client)

		// Egress on node-2 (y may send anywhere), ingress on node-1 (web
		// takes y's clients).
		start := time.Now()
		if _, err := pols.NetworkPolicies("y").Create(ctx, allowAllEgress("y"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := pols.NetworkPolicies("x").Create(ctx, allowIngress("x", "web", "web", "y", "client"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitAll()
		waits = append(waits, time.Since(start))
		reaches(t, client, web)
		denied(t, other, web)
		denied(t, web, client) // web may not send: its egress is node-1's

		// Update: the policy now admits "other" instead.
		start = time.Now()
		updated := allowIngress("x", "web", "web", "y", "other")
		cur, err := pols.NetworkPolicies("x").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		updated.ResourceVersion = cur.ResourceVersion
		if _, err := pols.NetworkPolicies("x").Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitAll()
		waits = append(waits, time.Since(start))
		denied(t, client, web)
		reaches(t, other, web)

		// A pod label change on node-2 changes node-1's peer set.
		start = time.Now()
		patch(t, c, "pods", "y", "client", `{"metadata":{"labels":{"app":"other"}}}`)
		c.waitAll()
		waits = append(waits, time.Since(start))
		reaches(t, client, web)

		// A namespace label change: y no longer matches team=y.
		start = time.Now()
		patch(t, c, "namespaces", "", "y", `{"metadata":{"labels":{"team":"z"}}}`)
		c.waitAll()
		waits = append(waits, time.Since(start))
		denied(t, client, web)
		denied(t, other, web)
		patch(t, c, "namespaces", "", "y", `{"metadata":{"labels":{"team":"y"}}}`)
		c.waitAll()
		reaches(t, client, web)

		// Deleting the egress policy closes it on the source's node,
		// although web's ingress still admits the client.
		start = time.Now()
		if err := pols.NetworkPolicies("y").Delete(ctx, "egress-all", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitAll()
		waits = append(waits, time.Since(start))
		denied(t, client, web)
		denied(t, other, web)
		if _, err := pols.NetworkPolicies("y").Create(ctx, allowAllEgress("y"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitAll()
		reaches(t, client, web)
		slices.Sort(waits)
		t.Logf("policy or label change to podwallctl wait returned on both nodes: %v (sorted)", waits)
	})

	t.Run("watch lag", func(t *testing.T) {
		// The plugin's ADD comes before the API server knows the pod: it
		// stays default-deny, although a policy would admit it.
		late := n1.attach("x", "late")
		reaches(t, client, web)
		denied(t, client, late)
		c.waitAll()
		denied(t, client, late)
		if st, err := n1.ctl("status"); err != nil || !strings.Contains(st, "late") {
			t.Errorf("status of node-1 does not list the attached pod: %v\n%s", err, st)
		}
		// Once it exists, it is enforced as its labels say.
		n1.register(late, map[string]string{"app": "web"})
		c.waitAll()
		reaches(t, client, late)
		denied(t, late, client)
	})

	t.Run("API server stop and restart", func(t *testing.T) {
		var restartAt time.Time
		stopping := time.Now()
		if err := c.cp.StopAPIServer(); err != nil {
			// It is stopped either way (killed after a grace period).
			t.Logf("stopping the API server: %v", err)
		}
		t.Logf("API server stopped after %v", time.Since(stopping).Round(time.Millisecond))
		stopped := time.Now()
		defer func() {
			t.Logf("checks with the API server down took %v", restartAt.Sub(stopped).Round(time.Millisecond))
		}()
		// Enforcement is intact while the API server is away.
		reaches(t, client, web)
		denied(t, web, client)
		for _, n := range c.nodes {
			out, err := n.ctl("wait", "--timeout", "5s")
			if err == nil {
				t.Errorf("podwallctl wait on %s succeeded with the API server down: %s", n.name, out)
			} else {
				t.Logf("podwallctl wait on %s with the API server down: %s", n.name, strings.TrimSpace(out))
			}
			if st, err := n.ctl("status"); err != nil || !readyLine.MatchString(st) {
				t.Errorf("status on %s with the API server down: %v\n%s", n.name, err, st)
			}
			// Said loudly, not only in the log.
			waitUntil(t, "the outage in the status of "+n.name, func() bool {
				st, err := n.ctl("status")
				return err == nil && strings.Contains(st, "kubernetes API server unreachable since")
			})
		}
		reaches(t, client, web)

		restartAt = time.Now()
		restarted := restartAt
		if err := c.cp.StartAPIServer(ctxFor(t, 3*time.Minute)); err != nil {
			t.Fatal(err)
		}
		t.Logf("API server back after %v", time.Since(restarted))
		// A change right after the restart is enforced.
		start := time.Now()
		if err := pols.NetworkPolicies("x").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		var lastErr error
		for _, n := range c.nodes {
			for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
				out, err := n.ctl("wait", "--timeout", "20s")
				if err == nil {
					break
				}
				lastErr = err
				if time.Now().After(deadline) {
					t.Fatalf("podwallctl wait on %s after the API server restart: %v\n%s", n.name, err, out)
				}
			}
		}
		t.Logf("policy delete after the restart enforced on both nodes after %v (last transient error: %v)", time.Since(start), lastErr)
		for _, n := range c.nodes {
			if st, err := n.ctl("status"); err != nil || strings.Contains(st, "unreachable") {
				t.Errorf("status on %s after the restart: %v\n%s", n.name, err, st)
			}
		}
		denied(t, client, web)
		denied(t, other, web)
	})

	t.Run("node pod CIDRs", func(t *testing.T) {
		fileHolds := func(n *kubeNode, want string) bool {
			data, err := os.ReadFile(n.podCIDRsFile())
			return err == nil && strings.TrimSpace(string(data)) == want
		}
		if want := `{"node":"node-1","podCIDRs":["10.244.1.0/24"]}`; !fileHolds(n1, want) {
			t.Errorf("%s does not hold %s", n1.podCIDRsFile(), want)
		}
		// node-2's Node has no podCIDRs yet: an empty list, then the
		// allocation as soon as it is made.
		if want := `{"node":"node-2","podCIDRs":[]}`; !fileHolds(n2, want) {
			t.Errorf("%s does not hold %s", n2.podCIDRsFile(), want)
		}
		patch(t, c, "nodes", "", "node-2", `{"spec":{"podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24"]}}`)
		waitUntil(t, "node-2's allocated podCIDRs in its file", func() bool {
			return fileHolds(n2, `{"node":"node-2","podCIDRs":["10.244.2.0/24"]}`)
		})
		if m, err := n1.metrics(); err != nil || metric(m, "podwall_node_podcidr_conflicts") != "0" {
			t.Fatalf("metrics of node-1 before the conflict: %v\n%s", err, m)
		}
		// A corporate route covering node-1's pod CIDR. Blackhole: it
		// must not carry anything, only be there.
		n1.mustRun("ip", "route", "add", "blackhole", "10.244.0.0/16")
		waitUntil(t, "the conflict metric on node-1", func() bool {
			m, err := n1.metrics()
			return err == nil && metric(m, "podwall_node_podcidr_conflicts") == "1"
		})
		waitUntil(t, "the PodCIDRConflict event on node-1", func() bool {
			return len(nodeEvents(t, c, "node-1", nodecidrs.ReasonConflict)) == 1
		})
		ev := nodeEvents(t, c, "node-1", nodecidrs.ReasonConflict)[0]
		if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "10.244.1.0/24 lies inside the node's route 10.244.0.0/16") {
			t.Errorf("event: %s %s", ev.Type, ev.Message)
		}
		if log, _ := os.ReadFile(n1.agentLog()); !strings.Contains(string(log), "level=ERROR msg=\"NODE POD CIDR CONFLICT") {
			t.Error("no error line in node-1's agent log")
		}
		if m, _ := n2.metrics(); metric(m, "podwall_node_podcidr_conflicts") != "0" {
			t.Errorf("node-2 reports a conflict:\n%s", m)
		}
		n1.mustRun("ip", "route", "del", "blackhole", "10.244.0.0/16")
		waitUntil(t, "the resolution on node-1", func() bool {
			m, err := n1.metrics()
			return err == nil && metric(m, "podwall_node_podcidr_conflicts") == "0" &&
				len(nodeEvents(t, c, "node-1", nodecidrs.ReasonResolved)) == 1
		})
	})
}

var readyLine = regexp.MustCompile(`(?m)^Ready:\s+yes$`)

func patch(t *testing.T, c *cluster, resource, ns, name, body string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	var err error
	switch resource {
	case "pods":
		_, err = c.client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
	case "namespaces":
		_, err = c.client.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
	case "nodes":
		_, err = c.client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
	}
	if err != nil {
		t.Fatalf("patching %s %s/%s: %v", resource, ns, name, err)
	}
}

func nodeEvents(t *testing.T, c *cluster, node, reason string) []corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.kind": "Node", "involvedObject.name": node, "reason": reason}.AsSelector().String()
	evs, err := c.client.CoreV1().Events("default").List(ctxFor(t, time.Minute), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatalf("listing events: %v", err)
	}
	return evs.Items
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
