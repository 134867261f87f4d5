package policy_test

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// compileBoth compiles in without a cache, then through cache told ch (the
// changes since the cache's last compilation), and fails the test unless
// both outputs are the same.
func compileBoth(t *testing.T, ch changes.Set, in policy.Input, cache *policy.Cache, what string) (got, want *ruleset.Desired) {
	t.Helper()
	want, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, err = cache.Compile(in, ch); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(comparable(got), comparable(want)) {
		t.Fatalf("%s: output with the cache differs:\n%s", what, diffOutputs(got, want))
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

// diffOutputs names the first differences, to make a failure readable.
func diffOutputs(got, want *ruleset.Desired) string {
	var out []string
	lines := func(d *ruleset.Desired) []string {
		var l []string
		for _, s := range d.Sets {
			l = append(l, fmt.Sprintf("set %s %v", s.Name, s.Members))
		}
		for _, c := range d.Chains {
			l = append(l, fmt.Sprintf("chain %s %s %v", c.Family, c.Name, c.Rules))
		}
		for _, p := range d.Pods {
			l = append(l, fmt.Sprintf("pod %v", p))
		}
		l = append(l, fmt.Sprintf("pending %v", d.Pending))
		for _, p := range d.Problems {
			l = append(l, "problem "+p.Error())
		}
		return l
	}
	g, w := lines(got), lines(want)
	for _, l := range g {
		if !slices.Contains(w, l) && len(out) < 6 {
			out = append(out, "cached only: "+l)
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) && len(out) < 12 {
			out = append(out, "full only:   "+l)
		}
	}
	return fmt.Sprint(out)
}

// changesBetween is what the sources and the agent report between two
// inputs: every object that differs in any way, by kind and name, and
// every pod whose chain key or reported addresses differ.
func changesBetween(prev, next policy.Input) changes.Set {
	ch := changes.None()
	for name := range differing(prev.Namespaces, next.Namespaces, func(ns *corev1.Namespace) ruleset.Ref { return ruleset.Ref{Name: ns.Name} }) {
		ch.Namespace(name.Name)
	}
	for ref := range differing(prev.Pods, next.Pods, func(p *corev1.Pod) ruleset.Ref { return ruleset.Ref{Namespace: p.Namespace, Name: p.Name} }) {
		ch.Pod(ref.Namespace, ref.Name)
	}
	for ref := range differing(prev.Policies, next.Policies, func(p *networkingv1.NetworkPolicy) ruleset.Ref {
		return ruleset.Ref{Namespace: p.Namespace, Name: p.Name}
	}) {
		ch.Policy(ref.Namespace, ref.Name)
	}
	for ref := range keysOf(prev.ChainKeys, next.ChainKeys, prev.PodIPs, next.PodIPs) {
		k1, ok1 := prev.ChainKeys[ref]
		k2, ok2 := next.ChainKeys[ref]
		ip1, ok3 := prev.PodIPs[ref]
		ip2, ok4 := next.PodIPs[ref]
		if k1 != k2 || ok1 != ok2 || ok3 != ok4 || !slices.Equal(ip1, ip2) {
			ch.Attachment(ref)
		}
	}
	return ch
}

func keysOf(keys1, keys2 map[ruleset.Ref]string, ips1, ips2 map[ruleset.Ref][]netip.Addr) map[ruleset.Ref]bool {
	out := map[ruleset.Ref]bool{}
	for _, m := range []map[ruleset.Ref]string{keys1, keys2} {
		for ref := range m {
			out[ref] = true
		}
	}
	for _, m := range []map[ruleset.Ref][]netip.Addr{ips1, ips2} {
		for ref := range m {
			out[ref] = true
		}
	}
	return out
}

// differing returns the names whose objects (all of them, in order, when
// listed more than once) differ between the two lists.
func differing[T any](prev, next []T, name func(*T) ruleset.Ref) map[ruleset.Ref]bool {
	group := func(list []T) map[ruleset.Ref][]*T {
		out := map[ruleset.Ref][]*T{}
		for i := range list {
			out[name(&list[i])] = append(out[name(&list[i])], &list[i])
		}
		return out
	}
	a, b := group(prev), group(next)
	out := map[ruleset.Ref]bool{}
	for ref, objs := range a {
		if !reflect.DeepEqual(objs, b[ref]) {
			out[ref] = true
		}
	}
	for ref := range b {
		if _, ok := a[ref]; !ok {
			out[ref] = true
		}
	}
	return out
}

// compileSteps compiles every input in order through one cache, told the
// changes between consecutive inputs (and whatever more extra, when set,
// adds), and checks each output against a full compilation, and that no
// later compilation changed an earlier output.
func compileSteps(t *testing.T, inputs []policy.Input, extra func(*changes.Set), what func(i int) string) {
	t.Helper()
	cache := policy.NewCache()
	type output struct {
		got  *ruleset.Desired
		text string
	}
	var outputs []output
	for i, in := range inputs {
		ch := changes.Rebuild()
		if i > 0 {
			ch = changesBetween(inputs[i-1], in)
			if extra != nil {
				extra(&ch)
			}
		}
		got, _ := compileBoth(t, ch, in, cache, what(i))
		outputs = append(outputs, output{got, fmt.Sprint(comparable(got))})
	}
	for i, o := range outputs {
		if fmt.Sprint(comparable(o.got)) != o.text {
			t.Errorf("%s: output changed by later compilations", what(i))
		}
	}
}

// A Cache changes nothing in the output, through changes of policies,
// labels, local pods' addresses (replaced by the agent's or in their
// status) and invalid objects.
func TestCacheGivesTheSameOutput(t *testing.T) {
	c := syntheticCluster(600, 10, 120)
	bad := *c.policies[3]
	bad.Name = "bad"
	bad.Spec.PolicyTypes = []networkingv1.PolicyType{"Sideways"}
	steps := []func(in *policy.Input){
		func(in *policy.Input) {},
		func(in *policy.Input) {}, // nothing changed
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
		func(in *policy.Input) {
			for ref := range in.ChainKeys {
				in.PodIPs = map[ruleset.Ref][]netip.Addr{ref: {netip.MustParseAddr("100.64.0.10")}}
				return
			}
		},
		func(in *policy.Input) { in.Pods[9].Status.PodIPs = []corev1.PodIP{{IP: "not-an-ip"}} },
		func(in *policy.Input) { in.Policies = append(in.Policies, bad) },
		func(in *policy.Input) { in.Policies = in.Policies[10:] },
	}
	var inputs []policy.Input
	for i := range steps {
		in := c.input(policy.ModeDeny, "node-1")
		for _, s := range steps[:i+1] {
			s(&in)
		}
		inputs = append(inputs, in)
	}
	compileSteps(t, inputs, nil, func(i int) string { return fmt.Sprintf("step %d", i) })
}

// The cache compiles again only the attachments that are new or whose pod
// or namespace's policies changed: the output must be what compiling anew
// gives, through attachments coming and going, a key shared by two pods, a
// key of a pod no object describes, a local pod's address replaced, local
// and remote pods relabelled, the mode changed, policies and namespaces
// changed, and back to the start.
func TestCacheReusesWhatDidNotChange(t *testing.T) {
	c := syntheticCluster(600, 10, 120)
	base := c.input(policy.ModeDeny, "node-1")
	var local []ruleset.Ref
	for ref := range base.ChainKeys {
		local = append(local, ref)
	}
	slices.SortFunc(local, func(a, b ruleset.Ref) int { return compareRefs(a, b) })
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
			in.PodIPs = map[ruleset.Ref][]netip.Addr{local[2]: {netip.MustParseAddr("100.64.0.9")}}
		},
		relabel(local[2], map[string]string{"app": "app-3", "tier": "db"}),
		relabel(remote, map[string]string{"app": "app-1"}),
		func(in *policy.Input) { in.Mode = policy.ModeKubernetes },
		func(in *policy.Input) {
			in.Policies = slices.Clone(in.Policies)
			in.Policies[5].Spec.Ingress = nil
		},
		func(in *policy.Input) {
			in.Namespaces = slices.Clone(in.Namespaces)
			in.Namespaces[1].Labels = map[string]string{"team": "other"}
		},
	}
	var order []int
	for i := range steps {
		order = append(order, i)
	}
	order = append(order, 0, 3, 1)
	var inputs []policy.Input
	for _, i := range order {
		in := base
		for _, s := range steps[:i+1] {
			s(&in)
		}
		inputs = append(inputs, in)
	}
	compileSteps(t, inputs, nil, func(n int) string { return fmt.Sprintf("compilation %d (step %d)", n, order[n]) })
}

// relabel gives a pod new labels.
func relabel(ref ruleset.Ref, labels map[string]string) func(in *policy.Input) {
	return func(in *policy.Input) {
		in.Pods = slices.Clone(in.Pods)
		for i := range in.Pods {
			if in.Pods[i].Namespace == ref.Namespace && in.Pods[i].Name == ref.Name {
				in.Pods[i].Labels = labels
			}
		}
	}
}

// Objects listed twice are compiled as Compile does (the first counts),
// whether they were already or become so.
func TestCacheWithDuplicates(t *testing.T) {
	c := syntheticCluster(300, 5, 40)
	in := c.input(policy.ModeDeny, "node-1")
	dupPod := func(in policy.Input) policy.Input {
		in.Pods = append(slices.Clone(in.Pods), in.Pods[3])
		in.Pods[len(in.Pods)-1].Labels = map[string]string{"app": "other"}
		return in
	}
	dupPolicy := func(in policy.Input) policy.Input {
		in.Policies = append(slices.Clone(in.Policies), in.Policies[2])
		return in
	}
	dupNamespace := func(in policy.Input) policy.Input {
		in.Namespaces = append(slices.Clone(in.Namespaces), in.Namespaces[1])
		in.Namespaces[len(in.Namespaces)-1].Labels = map[string]string{"team": "x"}
		return in
	}
	inputs := []policy.Input{in, dupPod(in), in, dupPolicy(in), dupPolicy(in), in, dupNamespace(in), in}
	compileSteps(t, inputs, nil, func(i int) string { return fmt.Sprintf("step %d", i) })
}
