package policy_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/synthetic"
	"github.com/podwall/podwall/enforcement/ruleset"
)

const localPods = synthetic.LocalPods

// syntheticCluster builds the cluster of package synthetic: nPods pods over
// nNS namespaces, with nPolicies policies of every kind. 110 pods, spread
// over the namespaces, are on node-1; the others on 49 other nodes.
func syntheticCluster(nPods, nNS, nPolicies int) *testCluster {
	c := newTestCluster()
	for i := range nNS {
		c.setNamespace(synthetic.NamespaceName(i), synthetic.NamespaceLabels(i))
	}
	for _, p := range synthetic.Pods(nPods, nNS) {
		c.pods = append(c.pods, &testPod{ns: p.Namespace, name: p.Name, labels: p.Labels, v4: p.V4, v6: p.V6, node: p.Node, ports: p.Ports})
	}
	for i := range nPolicies {
		c.policies = append(c.policies, synthetic.Policy(i, nNS, synthetic.NamespaceName(i%nNS)))
	}
	return c
}

// addRemoteCopies adds n pods on a remote node, labelled like the existing
// ones (cycled), with fresh addresses.
func (c *testCluster) addRemoteCopies(n int) {
	orig := len(c.pods)
	for i := range n {
		src := c.pods[i%orig]
		j := orig + i
		c.pods = append(c.pods, &testPod{
			ns: src.ns, name: fmt.Sprintf("copy-%05d", i), labels: src.labels,
			v4:   netip.AddrFrom4([4]byte{10, 96 + byte(j>>16), byte(j >> 8), byte(j)}),
			v6:   netip.AddrFrom16([16]byte{0xfd, 0x99, 14: byte(j >> 8), 15: byte(j)}),
			node: "node-99", ports: src.ports,
		})
	}
}

// BenchmarkCompile compiles the scale: 5,000 pods in the cluster,
// 110 on this node, 1,000 policies.
func BenchmarkCompile(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	in := c.input(policy.ModeDeny, "node-1")
	var d *ruleset.Desired
	for b.Loop() {
		var err error
		if d, err = policy.Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	if len(d.Pods) != localPods || len(d.Problems) > 0 {
		b.Fatalf("want %d local pods and no problems, got %d and %v", localPods, len(d.Pods), d.Problems)
	}
	st := d.Stats()
	b.ReportMetric(float64(len(d.Pods)), "local-pods")
	b.ReportMetric(float64(st.Chains), "chains")
	b.ReportMetric(float64(st.Rules), "rules")
	b.ReportMetric(float64(st.Sets), "sets")
	b.ReportMetric(float64(st.SetEntries), "set-entries")
}

// TestCompileAtScale keeps the benchmark's input honest and fast.
func TestCompileAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test")
	}
	c := syntheticCluster(5000, 50, 1000)
	d, sim := compileNode(t, c, policy.ModeDeny, "node-1")
	if len(d.Pods) != localPods || len(d.Problems) > 0 {
		t.Fatalf("want %d local pods and no problems, got %d and %v", localPods, len(d.Pods), d.Problems)
	}
	_ = sim
	t.Logf("scale: %+v", d.Stats())
}

// BenchmarkCompileCached is the same compilation through a Cache that
// holds every object already, told nothing changed: the agent's case when
// nothing but a sync asked for it.
func BenchmarkCompileCached(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	in := c.input(policy.ModeDeny, "node-1")
	cache := policy.NewCache()
	if _, err := cache.Compile(in, changes.Rebuild()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := cache.Compile(in, changes.None()); err != nil {
			b.Fatal(err)
		}
	}
}

// benchmarkChange alternates through one cache between two inputs that
// differ as the changes say, and times the compilations of after.
func benchmarkChange(b *testing.B, before, after policy.Input, ch changes.Set) {
	cache := policy.NewCache()
	if _, err := cache.Compile(before, changes.Rebuild()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		if _, err := cache.Compile(before, ch); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := cache.Compile(after, ch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompileAttach is a pod's ADD on a node at scale: the objects
// unchanged, one attachment more than in the last compilation.
func BenchmarkCompileAttach(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	without := c.input(policy.ModeDeny, "node-1")
	with := without
	with.ChainKeys = maps.Clone(without.ChainKeys)
	ref := ruleset.Ref{Namespace: "bench", Name: "new"}
	with.ChainKeys[ref] = policy.ChainKey("test-net", "new", "eth0")
	with.PodIPs = map[ruleset.Ref][]netip.Addr{ref: {netip.MustParseAddr("100.64.0.1")}}
	ch := changes.None()
	ch.Attachment(ref)
	benchmarkChange(b, without, with, ch)
}

// BenchmarkCompileAttachKnownPod is a pod's ADD as on a Kubernetes node:
// the source knows the pod, without addresses yet, and the agent gives it
// the ones the plugin reported, so the cluster differs from the last
// compilation's; the policies do not.
func BenchmarkCompileAttachKnownPod(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	with := c.input(policy.ModeDeny, "node-1")
	var ref ruleset.Ref
	for r := range with.ChainKeys {
		ref = r
		break
	}
	without := with
	without.ChainKeys = maps.Clone(with.ChainKeys)
	delete(without.ChainKeys, ref)
	without.Pods = slices.Clone(with.Pods)
	for i := range without.Pods {
		if p := &without.Pods[i]; p.Namespace == ref.Namespace && p.Name == ref.Name {
			with.PodIPs = map[ruleset.Ref][]netip.Addr{ref: {netip.MustParseAddr(p.Status.PodIPs[0].IP)}}
			p.Status.PodIPs, p.Status.PodIP = nil, ""
		}
	}
	with.Pods = without.Pods
	ch := changes.None()
	ch.Attachment(ref)
	benchmarkChange(b, without, with, ch)
}

// BenchmarkCompilePolicyChange is one policy changed at scale (its
// ingress rules dropped), everything else as before.
func BenchmarkCompilePolicyChange(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	before := c.input(policy.ModeDeny, "node-1")
	after := before
	after.Policies = slices.Clone(before.Policies)
	after.Policies[5].Spec.Ingress = nil
	ch := changes.None()
	ch.Policy(after.Policies[5].Namespace, after.Policies[5].Name)
	benchmarkChange(b, before, after, ch)
}

// BenchmarkCompilePodRelabel is one remote pod relabelled at scale, which
// moves it between peer selections.
func BenchmarkCompilePodRelabel(b *testing.B) {
	c := syntheticCluster(5000, 50, 1000)
	before := c.input(policy.ModeDeny, "node-1")
	after := before
	after.Pods = slices.Clone(before.Pods)
	var ref ruleset.Ref
	for i := range after.Pods {
		p := &after.Pods[i]
		if _, local := before.ChainKeys[ruleset.Ref{Namespace: p.Namespace, Name: p.Name}]; !local {
			p.Labels = map[string]string{"app": "app-1", "tier": "db"}
			ref = ruleset.Ref{Namespace: p.Namespace, Name: p.Name}
			break
		}
	}
	ch := changes.None()
	ch.Pod(ref.Namespace, ref.Name)
	benchmarkChange(b, before, after, ch)
}
