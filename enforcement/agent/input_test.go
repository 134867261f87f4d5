package agent

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// The compiler's pods are the snapshot's, never written; the attached
// pods' reported addresses come beside them; and every pod whose chain key
// or reported addresses changed since the last input is recorded, and
// only those.
func TestBuildInputRecordsWhatTheAttachmentsChanged(t *testing.T) {
	objs := source.Objects{Pods: []corev1.Pod{
		pod("x", "a", nil, "10.0.0.1"),
		pod("x", "b", nil, "10.0.0.2"),
		pod("", "c", nil, "10.0.0.3"),
	}}
	reg := newRegistry()
	var b inputBuilder
	attach := func(ns, name, key string, ips ...string) { attachTo(t, reg, ns, name, key, ips...) }
	build := func(want ...ruleset.Ref) policy.Input {
		t.Helper()
		ch := changes.None()
		in, _ := b.build(objs, reg, policy.ModeDeny, "", &ch)
		got := slices.SortedFunc(maps.Keys(ch.Attachments()), compareRefs)
		slices.SortFunc(want, compareRefs)
		if !slices.Equal(got, want) {
			t.Fatalf("recorded %v, want %v", got, want)
		}
		if &in.Pods[0] != &objs.Pods[0] {
			t.Fatal("the snapshot's pods were copied")
		}
		return in
	}
	a, c, newPod := ruleset.Ref{Namespace: "x", Name: "a"}, ruleset.Ref{Namespace: "default", Name: "c"}, ruleset.Ref{Namespace: "bench", Name: "new"}

	build()
	attach("bench", "new", "NEWNEWNEWNEWNEW0", "100.64.0.1")
	build(newPod)
	build()
	attach("default", "c", "CCCCCCCCCCCCCCCC", "100.64.0.3")
	attach("x", "a", "AAAAAAAAAAAAAAAA", "100.64.0.2")
	in := build(a, c)
	if got := in.PodIPs[a]; !slices.Equal(got, []netip.Addr{netip.MustParseAddr("100.64.0.2")}) {
		t.Errorf("a's reported addresses: %v", got)
	}
	if got := objs.Pods[0].Status.PodIPs[0].IP; got != "10.0.0.1" {
		t.Errorf("the snapshot was written: %s", got)
	}
	// A second attachment of a: the newest gets a's policy, the other an
	// identity of its own.
	attach("x", "a", "AAAAAAAAAAAAAAA2", "100.64.0.9")
	build(a, ruleset.Ref{Namespace: "x", Name: "a~AAAAAAAAAAAAAAAA"})
	reg.remove("AAAAAAAAAAAAAAAA")
	build(ruleset.Ref{Namespace: "x", Name: "a~AAAAAAAAAAAAAAAA"})
	reg.remove("CCCCCCCCCCCCCCCC")
	build(c)
}

func attachTo(t *testing.T, reg *registry, ns, name, key string, ips ...string) {
	t.Helper()
	att, err := parseAttachment(agentapi.Attachment{Key: key, Namespace: ns, Name: name, IPs: ips, HostIface: "veth0"})
	if err != nil {
		t.Fatal(err)
	}
	reg.put(att)
}

func compareRefs(a, b ruleset.Ref) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// What the agent records, with the source's changes, is enough: through
// attachments coming, going and moving, and source objects changing, the
// cache compiles what a full compilation does.
func TestAgentChangesKeepTheCacheRight(t *testing.T) {
	objs := source.Objects{
		Pods: []corev1.Pod{
			pod("x", "a", map[string]string{"app": "web"}, "10.0.0.1"),
			pod("x", "b", map[string]string{"app": "db"}, "10.0.0.2"),
			pod("y", "c", map[string]string{"app": "web"}, "10.0.0.3"),
		},
		Policies: []networkingv1.NetworkPolicy{allowFrom("x", "p", "db", "web")},
	}
	reg := newRegistry()
	var b inputBuilder
	cache := policy.NewCache()
	pending := changes.Rebuild()
	compile := func(what string) {
		t.Helper()
		in, _ := b.build(objs, reg, policy.ModeDeny, "node-1", &pending)
		got, err := cache.Compile(in, pending)
		if err != nil {
			t.Fatal(err)
		}
		pending = changes.None()
		want, err := policy.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Sets, want.Sets) || !reflect.DeepEqual(got.Chains, want.Chains) || !reflect.DeepEqual(got.Pods, want.Pods) {
			t.Fatalf("%s: the cache's output differs from a full compilation", what)
		}
	}
	attach := func(ns, name, key string, ips ...string) { attachTo(t, reg, ns, name, key, ips...) }
	compile("start")
	for i, step := range []func(){
		func() { attach("x", "b", "BBBBBBBBBBBBBBBB", "100.64.0.2") },
		func() { attach("y", "c", "CCCCCCCCCCCCCCCC", "100.64.0.3") },
		func() { attach("y", "c", "CCCCCCCCCCCCCCC2", "100.64.0.4") },
		func() { reg.remove("CCCCCCCCCCCCCCCC") },
		func() { attach("x", "ghost", "GGGGGGGGGGGGGGGG", "100.64.0.5") },
		func() {
			objs.Pods = append(slices.Clone(objs.Pods), pod("x", "ghost", map[string]string{"app": "web"}))
			pending.Pod("x", "ghost")
		},
		func() { attach("x", "b", "BBBBBBBBBBBBBBBB", "100.64.0.6") },
		func() { reg.remove("BBBBBBBBBBBBBBBB") },
		func() {
			applied := map[string]uint64{}
			for key, att := range reg.byKey {
				applied[key] = att.seq
			}
			reg.syncWith(nil, applied)
		},
	} {
		step()
		compile(fmt.Sprintf("step %d", i))
	}
}
