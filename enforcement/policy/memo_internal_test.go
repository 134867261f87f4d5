package policy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// The cheap paths are taken when they may be: the same objects reuse the
// last cluster and attachments, a changed pod patches the cluster (and
// the next compilation of the same input reuses the patched one), and a
// changed namespace indexes everything anew.
func TestCacheTakesTheCheapPaths(t *testing.T) {
	pod := func(name, ip, version string) corev1.Pod {
		return corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, ResourceVersion: version, Labels: map[string]string{"app": name}},
			Status:     corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	in := Input{
		Namespaces: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", ResourceVersion: "1"}}},
		Pods:       []corev1.Pod{pod("a", "10.0.0.1", "1"), pod("b", "10.0.0.2", "1"), pod("c", "10.0.0.3", "1")},
		Mode:       ModeDeny,
		ChainKeys:  map[ruleset.Ref]string{{Namespace: "x", Name: "a"}: "AAAA", {Namespace: "x", Name: "b"}: "BBBB"},
		Cache:      NewCache(),
	}
	compile := func() {
		t.Helper()
		if _, err := Compile(in); err != nil {
			t.Fatal(err)
		}
	}
	compile()
	first := in.Cache.cluster.cluster
	chainsOfB := in.Cache.policiesMemo.attachments["BBBB\x00x/b"]
	if first == nil || chainsOfB == nil {
		t.Fatal("nothing remembered")
	}
	compile()
	if in.Cache.cluster.cluster != first {
		t.Error("the same objects indexed anew")
	}

	// a is attached with a new address: the cluster is patched, b's
	// chains are kept, a's compiled again.
	in.Pods = []corev1.Pod{pod("a", "100.64.0.1", "1"), in.Pods[1], in.Pods[2]}
	compile()
	patched := in.Cache.cluster.cluster
	if patched == first || len(patched.namespaces) != len(first.namespaces) || &patched.namespaces[0] != &first.namespaces[0] {
		t.Error("the cluster was not patched")
	}
	if patched.byRef[ruleset.Ref{Namespace: "x", Name: "a"}].ips[0].String() != "100.64.0.1" {
		t.Error("the patched cluster has a's old address")
	}
	if in.Cache.policiesMemo.attachments["BBBB\x00x/b"] != chainsOfB {
		t.Error("b's chains compiled again")
	}
	if len(in.Cache.pods) != 3 {
		t.Errorf("per-pod cache holds %d entries, want the 3 current pods", len(in.Cache.pods))
	}
	compile()
	if in.Cache.cluster.cluster != patched {
		t.Error("the patched cluster not reused for the same input")
	}

	// A namespace changed: everything indexed anew.
	in.Namespaces = []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", ResourceVersion: "2", Labels: map[string]string{"t": "1"}}}}
	compile()
	if c := in.Cache.cluster.cluster; c == patched || c.nsLabels["x"]["t"] != "1" {
		t.Error("a changed namespace did not index the cluster anew")
	}
}
