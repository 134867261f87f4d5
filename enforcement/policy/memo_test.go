package policy_test

import (
	"fmt"
	"maps"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// A Cache reuses what it compiled from the same pods and namespaces, and
// from the same policies, and compiles only the attachments that are new or
// whose pod changed: the output must be what compiling anew gives, through
// attachments coming and going, a key shared by two pods, a key of a pod no
// object describes, a local pod's address replaced, local and remote pods
// relabelled, the mode changed, and policies and namespaces changed; and no
// later compilation may change an earlier output.
func TestCacheReusesWhatDidNotChange(t *testing.T) {
	c := syntheticCluster(600, 10, 120)
	base := versioned(c.input(policy.ModeDeny, "node-1"))
	var local []ruleset.Ref
	for ref := range base.ChainKeys {
		local = append(local, ref)
	}
	if len(local) < 3 {
		t.Fatalf("want local pods, got %d", len(local))
	}
	var remote ruleset.Ref
	for _, p := range base.Pods {
		if ref := (ruleset.Ref{Namespace: p.Namespace, Name: p.Name}); base.ChainKeys[ref] == "" {
			remote = ref
			break
		}
	}
	keys := func(edit func(k map[ruleset.Ref]string)) func(in *policy.Input) {
		return func(in *policy.Input) {
			in.ChainKeys = maps.Clone(in.ChainKeys)
			edit(in.ChainKeys)
		}
	}
	steps := []func(in *policy.Input){
		func(in *policy.Input) {},
		keys(func(k map[ruleset.Ref]string) { delete(k, local[0]) }),
		keys(func(k map[ruleset.Ref]string) { k[ruleset.Ref{Namespace: "bench", Name: "new"}] = "NEWNEWNEWNEWNEW0" }),
		keys(func(k map[ruleset.Ref]string) { k[remote] = "REMOTEREMOTEREM0" }),
		keys(func(k map[ruleset.Ref]string) { k[remote] = k[local[1]] }),
		func(in *policy.Input) {
			in.Pods = append([]corev1.Pod(nil), in.Pods...)
			for i := range in.Pods {
				if in.Pods[i].Namespace == local[2].Namespace && in.Pods[i].Name == local[2].Name {
					in.Pods[i].Status.PodIPs = []corev1.PodIP{{IP: "100.64.0.9"}}
					in.Pods[i].Status.PodIP = "100.64.0.9"
				}
			}
		},
		relabel(local[2], map[string]string{"app": "app-3", "tier": "db"}),
		relabel(remote, map[string]string{"app": "app-1"}),
		func(in *policy.Input) { in.Mode = policy.ModeKubernetes },
		func(in *policy.Input) {
			in.Policies = append(in.Policies[:0:0], in.Policies...)
			in.Policies[5].Spec.Ingress = nil
			in.Policies[5].ResourceVersion += "-changed"
		},
		func(in *policy.Input) {
			in.Namespaces = append(in.Namespaces[:0:0], in.Namespaces...)
			in.Namespaces[1].Labels = map[string]string{"team": "other"}
			in.Namespaces[1].ResourceVersion += "-changed"
		},
	}
	// Every prefix of the steps, then back to the start, through one cache.
	var order []int
	for i := range steps {
		order = append(order, i)
	}
	order = append(order, 0, 3, 1)
	cache := policy.NewCache()
	type output struct {
		got  *ruleset.Desired
		want any
	}
	var outputs []output
	for n, i := range order {
		in := base
		for _, s := range steps[:i+1] {
			s(&in)
		}
		got, want := compileBoth(t, in, cache, fmt.Sprintf("compilation %d (step %d)", n, i))
		outputs = append(outputs, output{got, comparable(want)})
	}
	for n, o := range outputs {
		if !reflect.DeepEqual(comparable(o.got), o.want) {
			t.Errorf("compilation %d: output changed by later compilations", n)
		}
	}
}

// relabel gives a pod new labels and a new resourceVersion.
func relabel(ref ruleset.Ref, labels map[string]string) func(in *policy.Input) {
	return func(in *policy.Input) {
		in.Pods = append([]corev1.Pod(nil), in.Pods...)
		for i := range in.Pods {
			if in.Pods[i].Namespace == ref.Namespace && in.Pods[i].Name == ref.Name {
				in.Pods[i].Labels = labels
				in.Pods[i].ResourceVersion += "-relabelled"
			}
		}
	}
}

// An object without a resourceVersion cannot be recognised: nothing is
// reused, and a changed object is compiled as it is.
func TestCacheWithoutVersionsCompilesAnew(t *testing.T) {
	c := syntheticCluster(300, 5, 40)
	in := c.input(policy.ModeDeny, "node-1") // no resourceVersions
	in.Cache = policy.NewCache()
	if _, err := policy.Compile(in); err != nil {
		t.Fatal(err)
	}
	in.Pods = append([]corev1.Pod(nil), in.Pods...)
	in.Pods[3].Labels = map[string]string{"app": "nothing-selects-this"}
	compileBoth(t, in, in.Cache, "changed pod")
}
