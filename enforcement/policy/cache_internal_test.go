package policy

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// The cheap paths are taken when they may be: nothing changed reuses
// everything; a changed pod patches the cluster and recompiles only its
// own attachment; a changed policy recompiles the attachments of its
// namespace; a changed namespace keeps every attachment; unknown changes
// derive everything anew.
func TestCacheTakesTheCheapPaths(t *testing.T) {
	pod := func(ns, name, ip string) corev1.Pod {
		return corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
			Status:     corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	a, b := ruleset.Ref{Namespace: "x", Name: "a"}, ruleset.Ref{Namespace: "y", Name: "b"}
	in := Input{
		Namespaces: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, {ObjectMeta: metav1.ObjectMeta{Name: "y"}}},
		Pods:       []corev1.Pod{pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.0.2"), pod("x", "c", "10.0.0.3")},
		Policies: []networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p"},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "c"}}}}}}}}},
		Mode:      ModeDeny,
		ChainKeys: map[ruleset.Ref]string{a: "AAAA", b: "BBBB"},
	}
	cache := NewCache()
	compile := func(ch changes.Set) {
		t.Helper()
		want, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cache.Compile(in, ch)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Sets) != len(want.Sets) || len(got.Chains) != len(want.Chains) {
			t.Fatal("output differs from a full compilation")
		}
	}
	compiledOf := func(ref ruleset.Ref) *compiledAttachment {
		for _, att := range cache.last.compiled {
			if att.pods[0].Pod == ref {
				return att
			}
		}
		t.Fatalf("%s not compiled", ref)
		return nil
	}
	compile(changes.Rebuild())
	first, ofA, ofB := cache.last, compiledOf(a), compiledOf(b)
	if set := cache.last.selections["ns=x|podsel:app=c"]; set == nil || len(set.pods) != 1 {
		t.Fatal("the peer's selection was not kept")
	}

	compile(changes.None())
	if cache.last != first || compiledOf(a) != ofA || compiledOf(b) != ofB {
		t.Error("nothing changed, yet something was derived anew")
	}

	// c, a peer of a's policy, gets a new address: a's set is filled
	// again, no chain is compiled again.
	in.Pods = []corev1.Pod{in.Pods[0], in.Pods[1], pod("x", "c", "10.0.0.9")}
	ch := changes.None()
	ch.Pod("x", "c")
	compile(ch)
	if cache.last != first || compiledOf(a) != ofA || compiledOf(b) != ofB {
		t.Error("a peer's new address compiled chains again")
	}
	if got := cache.last.selections["ns=x|podsel:app=c"].pods[0].ips[0].String(); got != "10.0.0.9" {
		t.Errorf("the selection holds c's old address %s", got)
	}

	// The plugin reports a's address: only a's chains are compiled again.
	in.PodIPs = map[ruleset.Ref][]netip.Addr{a: {netip.MustParseAddr("100.64.0.1")}}
	ch = changes.None()
	ch.Attachment(a)
	compile(ch)
	if compiledOf(a) == ofA || compiledOf(b) != ofB {
		t.Error("a's attachment: want a's chains compiled again, b's kept")
	}
	if got := compiledOf(a).pods[0].IPs[0].String(); got != "100.64.0.1" {
		t.Errorf("a is enforced with address %s, want the reported one", got)
	}
	ofA = compiledOf(a)

	// A policy of x changed: a's chains are compiled again, b's are not.
	in.Policies = []networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p"}}}
	ch = changes.None()
	ch.Policy("x", "p")
	compile(ch)
	if compiledOf(a) == ofA || compiledOf(b) != ofB {
		t.Error("x's policy: want a's chains compiled again, b's kept")
	}
	ofA = compiledOf(a)

	// A namespace relabelled: chains kept.
	in.Namespaces = []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"t": "1"}}}, in.Namespaces[1]}
	ch = changes.None()
	ch.Namespace("x")
	compile(ch)
	if cache.last != first || compiledOf(a) != ofA || compiledOf(b) != ofB {
		t.Error("a namespace's labels compiled chains again")
	}
	if cache.last.cluster.nsLabels["x"]["t"] != "1" {
		t.Error("the namespace's new labels are not in the cluster")
	}

	compile(changes.Rebuild())
	if cache.last == first {
		t.Error("unknown changes did not derive everything anew")
	}
}
