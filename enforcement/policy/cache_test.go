package policy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// versioned stamps every object with a resourceVersion derived from its
// content, as the sources do (the API server, the policy dir's hash).
func versioned(in policy.Input) policy.Input {
	in.Namespaces = append([]corev1.Namespace(nil), in.Namespaces...)
	for i := range in.Namespaces {
		ns := &in.Namespaces[i]
		ns.ResourceVersion = shortHash(fmt.Sprintf("%v", ns.Labels))
	}
	in.Pods = append([]corev1.Pod(nil), in.Pods...)
	for i := range in.Pods {
		p := &in.Pods[i]
		p.ResourceVersion = shortHash(fmt.Sprintf("%v|%v|%v", p.Labels, p.Spec, p.Status.Phase))
	}
	in.Policies = append([]networkingv1.NetworkPolicy(nil), in.Policies...)
	for i := range in.Policies {
		p := &in.Policies[i]
		p.ResourceVersion = shortHash(p.Spec.String())
	}
	return in
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// A Cache changes nothing in the output, through changes of policies,
// labels, local pods' addresses (which the agent overrides without a new
// resourceVersion) and invalid objects.
func TestCacheGivesTheSameOutput(t *testing.T) {
	c := syntheticCluster(600, 10, 120)
	cache := policy.NewCache()
	bad := *c.policies[3]
	bad.Name = "bad"
	bad.Spec.PolicyTypes = []networkingv1.PolicyType{"Sideways"}
	steps := []func(in *policy.Input){
		func(in *policy.Input) {},
		func(in *policy.Input) {}, // everything from the cache
		func(in *policy.Input) { in.Policies[5].Spec.Ingress = nil },
		func(in *policy.Input) { in.Pods[7].Labels = map[string]string{"app": "app-1", "tier": "db"} },
		func(in *policy.Input) {
			for i := range in.Pods {
				if _, local := in.ChainKeys[ruleset.Ref{Namespace: in.Pods[i].Namespace, Name: in.Pods[i].Name}]; local {
					in.Pods[i].Status.PodIPs = []corev1.PodIP{{IP: "100.64.0.9"}}
					in.Pods[i].Status.PodIP = "100.64.0.9"
					return
				}
			}
			t.Fatal("no local pod")
		},
		func(in *policy.Input) { in.Pods[9].Status.PodIPs = []corev1.PodIP{{IP: "not-an-ip"}} },
		func(in *policy.Input) { in.Policies = append(in.Policies, bad) },
		func(in *policy.Input) { in.Policies = in.Policies[10:] },
	}
	for i := range steps {
		in := c.input(policy.ModeDeny, "node-1")
		for _, s := range steps[:i+1] {
			s(&in)
		}
		compileBoth(t, versioned(in), cache, fmt.Sprintf("step %d", i))
	}
}

// compileBoth compiles in without a cache, then through cache, and fails
// the test unless both outputs are the same.
func compileBoth(t *testing.T, in policy.Input, cache *policy.Cache, what string) (got, want *ruleset.Desired) {
	t.Helper()
	in.Cache = nil
	want, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Cache = cache
	if got, err = policy.Compile(in); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(comparable(got), comparable(want)) {
		t.Fatalf("%s: output with the cache differs", what)
	}
	return got, want
}

func comparable(d *ruleset.Desired) any {
	problems := make([]string, len(d.Problems))
	for i, p := range d.Problems {
		problems[i] = p.Error()
	}
	return []any{d.Sets, d.Chains, d.Pods, d.Pending, problems}
}
