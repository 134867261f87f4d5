package policy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/iptsim"
	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testPod is a pod of the in-memory cluster the tests build.
type testPod struct {
	ns, name string
	labels   map[string]string
	v4, v6   netip.Addr
	node     string
	ports    []corev1.ContainerPort
}

func (p *testPod) ref() ruleset.Ref { return ruleset.Ref{Namespace: p.ns, Name: p.name} }

func (p *testPod) addr(f ruleset.Family) netip.Addr {
	if f == ruleset.IPv6 {
		return p.v6
	}
	return p.v4
}

func (p *testPod) object() corev1.Pod {
	pod := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: p.labels},
		Spec:       corev1.PodSpec{NodeName: p.node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for i, cp := range p.ports {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name:  fmt.Sprintf("c%d", i),
			Ports: []corev1.ContainerPort{cp},
		})
	}
	for _, a := range []netip.Addr{p.v4, p.v6} {
		if a.IsValid() {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
	}
	if len(pod.Status.PodIPs) > 0 {
		pod.Status.PodIP = pod.Status.PodIPs[0].IP
	}
	return pod
}

// testCluster is namespaces, pods and policies, changed by test steps.
type testCluster struct {
	nsLabels map[string]map[string]string
	pods     []*testPod
	policies []*networkingv1.NetworkPolicy
}

func newTestCluster() *testCluster {
	return &testCluster{nsLabels: map[string]map[string]string{}}
}

func (c *testCluster) namespaces() []string {
	var out []string
	for ns := range c.nsLabels {
		out = append(out, ns)
	}
	slices.Sort(out)
	return out
}

func (c *testCluster) setNamespace(ns string, labels map[string]string) {
	l := map[string]string{}
	for k, v := range labels {
		l[k] = v
	}
	// The API server keeps this label on every namespace.
	l[corev1.LabelMetadataName] = ns
	c.nsLabels[ns] = l
}

func (c *testCluster) pod(ns, name string) *testPod {
	for _, p := range c.pods {
		if p.ns == ns && p.name == name {
			return p
		}
	}
	return nil
}

func (c *testCluster) deletePod(ns, name string) bool {
	n := len(c.pods)
	c.pods = slices.DeleteFunc(c.pods, func(p *testPod) bool { return p.ns == ns && p.name == name })
	return len(c.pods) < n
}

func (c *testCluster) policyIndex(ns, name string) int {
	return slices.IndexFunc(c.policies, func(p *networkingv1.NetworkPolicy) bool {
		return p.Namespace == ns && p.Name == name
	})
}

// input builds the compiler input for one node: the pods on that node are
// attached (keyed); the rest are peers.
func (c *testCluster) input(mode policy.Mode, node string) policy.Input {
	in := policy.Input{Node: node, Mode: mode, ChainKeys: map[ruleset.Ref]string{}}
	for _, ns := range c.namespaces() {
		in.Namespaces = append(in.Namespaces, corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: c.nsLabels[ns]},
		})
	}
	for _, p := range c.pods {
		in.Pods = append(in.Pods, p.object())
		if p.node == node {
			in.ChainKeys[p.ref()] = policy.ChainKey("test-net", p.ns, p.name, "eth0")
		}
	}
	for _, np := range c.policies {
		in.Policies = append(in.Policies, *np)
	}
	return in
}

// compileNode compiles for one node and checks structural invariants.
func compileNode(t testing.TB, c *testCluster, mode policy.Mode, node string) (*ruleset.Desired, *iptsim.Simulator) {
	t.Helper()
	d, err := policy.Compile(c.input(mode, node))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	checkInvariants(t, d)
	sim, err := iptsim.New(d)
	if err != nil {
		t.Fatalf("iptsim.New: %v", err)
	}
	return d, sim
}

// checkInvariants checks what must hold for any Desired: names within
// limits and under the one prefix, chains that end in an unconditional
// verdict so nothing falls through, and sets that list each entry once.
func checkInvariants(t testing.TB, d *ruleset.Desired) {
	t.Helper()
	for _, ch := range d.Chains {
		if len(ch.Name) > 28 || !strings.HasPrefix(ch.Name, policy.Prefix) {
			t.Errorf("chain name %q: want at most 28 characters starting with %s", ch.Name, policy.Prefix)
		}
		if len(ch.Rules) == 0 {
			t.Errorf("chain %s (%s) is empty", ch.Name, ch.Family)
			continue
		}
		last := ch.Rules[len(ch.Rules)-1]
		if len(last) != 6 || last[0] != "-m" || last[1] != "comment" || last[4] != "-j" ||
			(last[5] != policy.TargetDeny && last[5] != policy.TargetAllow) {
			t.Errorf("chain %s (%s) does not end in an unconditional verdict: %s", ch.Name, ch.Family, last)
		}
	}
	used := map[string]bool{}
	for _, ch := range d.Chains {
		for _, r := range ch.Rules {
			if i := slices.Index(r, "--match-set"); i >= 0 {
				used[r[i+1]] = true
			}
		}
	}
	for _, s := range d.Sets {
		if len(s.Name) > 31 || !strings.HasPrefix(s.Name, policy.Prefix) {
			t.Errorf("set name %q: want at most 31 characters starting with %s", s.Name, policy.Prefix)
		}
		if !used[s.Name] {
			t.Errorf("set %s (%s) is not used by any rule", s.Name, s.Comment)
		}
		// The dataplane relies on it when it compares sets.
		addrs := map[string]bool{}
		for _, m := range s.Members {
			addr, _, _ := strings.Cut(m, " ")
			if addrs[addr] {
				t.Errorf("set %s (%s) lists %s twice", s.Name, s.Comment, addr)
			}
			addrs[addr] = true
		}
	}
}

// dumpChains renders the chains of the given pods like iptables -S.
func dumpChains(d *ruleset.Desired, f ruleset.Family, pods ...ruleset.Ref) string {
	var b strings.Builder
	var sets []string
	for _, lp := range d.Pods {
		if !slices.Contains(pods, lp.Pod) {
			continue
		}
		for _, name := range []string{lp.EgressChain, lp.IngressChain} {
			ch := d.Chain(f, name)
			if ch == nil {
				continue
			}
			for _, r := range ch.Rules {
				fmt.Fprintf(&b, "    -A %s %s\n", ch.Name, r)
				if i := slices.Index(r, "--match-set"); i >= 0 && !slices.Contains(sets, r[i+1]) {
					sets = append(sets, r[i+1])
				}
			}
		}
	}
	for _, name := range sets {
		if s := d.Set(name); s != nil {
			fmt.Fprintf(&b, "    set %s %s (%s): %s\n", s.Name, s.Type, s.Comment, strings.Join(s.Members, " "))
		}
	}
	return b.String()
}
