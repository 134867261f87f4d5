package agent

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/source"
)

// The compiler's pods are the snapshot's with the attached pods' addresses
// replaced; they are made again only when the snapshot or a replacement
// changes, and the snapshot itself is never written.
func TestBuildInputReusesPodsWhileNothingTheyShowChanged(t *testing.T) {
	objs := source.Objects{Pods: []corev1.Pod{
		pod("x", "a", nil, "10.0.0.1"),
		pod("x", "b", nil, "10.0.0.2"),
		pod("", "c", nil, "10.0.0.3"),
	}}
	reg := newRegistry()
	var memo podsMemo
	attach := func(ns, name, key string, ips ...string) {
		t.Helper()
		att, err := parseAttachment(agentapi.Attachment{Key: key, Namespace: ns, Name: name, IPs: ips, HostIface: "veth0"})
		if err != nil {
			t.Fatal(err)
		}
		reg.put(att)
	}
	build := func() []corev1.Pod {
		in, _ := buildInput(objs, reg, policy.ModeDeny, "", &memo)
		return in.Pods
	}
	ipsOf := func(pods []corev1.Pod) []string {
		var out []string
		for _, p := range pods {
			out = append(out, p.Status.PodIPs[0].IP)
		}
		return out
	}

	first := build()
	if got := ipsOf(first); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}) {
		t.Fatalf("no attachment: %v", got)
	}
	// An attachment of a pod the source does not know, with the same
	// snapshot: the same pods.
	attach("bench", "new", "NEWNEWNEWNEWNEW0", "100.64.0.1")
	if again := build(); &again[0] != &first[0] {
		t.Error("pods made again though nothing they show changed")
	}
	// The default namespace is matched by its name or by none.
	attach("default", "c", "CCCCCCCCCCCCCCCC", "100.64.0.3")
	attach("x", "a", "AAAAAAAAAAAAAAAA", "100.64.0.2")
	second := build()
	if got := ipsOf(second); !slices.Equal(got, []string{"100.64.0.2", "10.0.0.2", "100.64.0.3"}) {
		t.Fatalf("attached pods' addresses not replaced: %v", got)
	}
	if got := ipsOf(objs.Pods); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}) {
		t.Fatalf("the snapshot was written: %v", got)
	}
	if again := build(); &again[0] != &second[0] {
		t.Error("pods made again though nothing they show changed")
	}
	// A new address for an attached pod, a detached pod, a new snapshot.
	attach("x", "a", "AAAAAAAAAAAAAAA2", "100.64.0.9")
	if got := ipsOf(build()); !slices.Equal(got, []string{"100.64.0.9", "10.0.0.2", "100.64.0.3"}) {
		t.Fatalf("after a new attachment of a: %v", got)
	}
	reg.remove("CCCCCCCCCCCCCCCC")
	if got := ipsOf(build()); !slices.Equal(got, []string{"100.64.0.9", "10.0.0.2", "10.0.0.3"}) {
		t.Fatalf("after c's detach: %v", got)
	}
	objs = source.Objects{Pods: []corev1.Pod{pod("x", "b", nil, "10.0.0.2"), pod("x", "a", nil, "10.0.0.1")}}
	if got := ipsOf(build()); !slices.Equal(got, []string{"10.0.0.2", "100.64.0.9"}) {
		t.Fatalf("after a new snapshot: %v", got)
	}
}
