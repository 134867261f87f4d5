package dataplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/policy/synthetic"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/test/harness"
)

// scaleNode is a node namespace holding the scale: the 110 local
// pods of the synthetic cluster (5,000 pods, 1,000 policies) installed as
// the plugin installs them, and their policy applied.
type scaleNode struct {
	node  *harness.Node
	dir   string
	in    policy.Input
	local []dataplane.Pod
}

func newScaleNode(b *testing.B) *scaleNode {
	b.Helper()
	node := harness.NewNode(b)
	s := &scaleNode{node: node, dir: node.Dir + "/state"}
	spods := synthetic.Pods(5000, 50)
	in := policy.Input{Node: synthetic.LocalNode, Mode: policy.ModeDeny, ChainKeys: map[ruleset.Ref]string{},
		Policies: synthetic.Policies(1000, 50)}
	for i := range 50 {
		in.Namespaces = append(in.Namespaces, synthetic.Namespace(i))
	}
	for _, p := range spods {
		in.Pods = append(in.Pods, p.Object(true))
		if !p.Local() {
			continue
		}
		key := ruleset.ChainKey("podnet", p.Name, "eth0")
		dp := dataplane.Pod{Key: key, Network: "podnet", ContainerID: p.Name, IfName: "eth0",
			Namespace: p.Namespace, Name: p.Name, HostIface: fmt.Sprintf("veth%d", len(s.local)), Layout: dataplane.LayoutBridge, Bridge: "podbr0"}
		for _, a := range []netip.Addr{p.V4, p.V6} {
			if a.IsValid() {
				dp.IPs = append(dp.IPs, a)
			}
		}
		s.local = append(s.local, dp)
		in.ChainKeys[ruleset.Ref{Namespace: p.Namespace, Name: p.Name}] = key
	}
	s.in = in
	s.do(b, func(ctx context.Context, d *dataplane.Dataplane) error {
		for _, p := range s.local {
			if err := d.EnsurePod(ctx, p); err != nil {
				return err
			}
		}
		_, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Policy: s.compile(b, 0)})
		return err
	})
	return s
}

// compile compiles the cluster with one extra policy whose port is
// variant: a change that rewrites the ingress chains of a few local pods.
func (s *scaleNode) compile(b *testing.B, variant int) *ruleset.Desired {
	b.Helper()
	in := s.in
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(int32(7000 + variant))
	in.Policies = append(in.Policies[:len(in.Policies):len(in.Policies)], networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns-00", Name: "bench-change"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	})
	d, err := policy.Compile(in)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func (s *scaleNode) do(b *testing.B, fn func(ctx context.Context, d *dataplane.Dataplane) error) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := s.node.Do(func() error {
		d, err := dataplane.New(dataplane.Config{StateDir: s.dir}, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		return fn(ctx, d)
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDataplaneAtScale times the dataplane's operations on a node at
// the scale: an Apply that changes nothing, one that rewrites the
// chains one policy change touches, and a pod's install and removal as
// the plugin's ADD does it (the removal is not timed).
func BenchmarkDataplaneAtScale(b *testing.B) {
	s := newScaleNode(b)
	desired := []*ruleset.Desired{s.compile(b, 1), s.compile(b, 2)}
	b.Run("ApplyUnchanged", func(b *testing.B) {
		s.do(b, func(ctx context.Context, d *dataplane.Dataplane) error {
			if _, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Policy: desired[0]}); err != nil {
				return err
			}
			for b.Loop() {
				st, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Policy: desired[0]})
				if err != nil {
					return err
				}
				if !st.Unchanged {
					return fmt.Errorf("apply of the same state changed %+v", st)
				}
			}
			return nil
		})
	})
	b.Run("ApplyOnePolicyChanged", func(b *testing.B) {
		s.do(b, func(ctx context.Context, d *dataplane.Dataplane) error {
			i := 0
			for b.Loop() {
				i++
				st, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Policy: desired[i%2]})
				if err != nil {
					return err
				}
				if st.ChainsWritten == 0 {
					return fmt.Errorf("apply of a changed policy wrote nothing: %+v", st)
				}
			}
			return nil
		})
	})
	// A pod's ADD: the agent's Apply writes its chains, dispatch and
	// policy in one restore per family.
	b.Run("ApplyAttach", func(b *testing.B) {
		extra := s.local[0]
		extra.Key, extra.Name, extra.ContainerID, extra.HostIface = "BENCHATTACH", "bench-attach", "bench-attach", "vethattach"
		ref := ruleset.Ref{Namespace: extra.Namespace, Name: extra.Name}
		s.in.ChainKeys[ref] = extra.Key
		with := s.compile(b, 1)
		delete(s.in.ChainKeys, ref)
		s.do(b, func(ctx context.Context, d *dataplane.Dataplane) error {
			if _, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Policy: desired[0]}); err != nil {
				return err
			}
			withExtra := append(slices.Clone(s.local), extra)
			for range b.N {
				st, err := d.Apply(ctx, dataplane.Target{Pods: withExtra, Policy: with})
				if err != nil {
					return err
				}
				if st.ChainsWritten != 4 || st.PodsWritten != 2 {
					return fmt.Errorf("attach wrote %+v, want the pod's 4 policy chains, in both families", st)
				}
				b.StopTimer()
				if _, err := d.Apply(ctx, dataplane.Target{Pods: s.local, Remove: []string{extra.Key}, Policy: desired[0]}); err != nil {
					return err
				}
				b.StartTimer()
			}
			return nil
		})
	})
	b.Run("EnsurePod", func(b *testing.B) {
		extra := s.local[0]
		extra.Key, extra.Name, extra.ContainerID, extra.HostIface = "BENCHEXTRA", "bench-extra", "bench-extra", "vethbench"
		s.do(b, func(ctx context.Context, d *dataplane.Dataplane) error {
			for range b.N {
				if err := d.EnsurePod(ctx, extra); err != nil {
					return err
				}
				b.StopTimer()
				if err := d.RemovePod(ctx, extra.Key); err != nil {
					return err
				}
				b.StartTimer()
			}
			return nil
		})
	})
}
