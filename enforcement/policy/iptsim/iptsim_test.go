package iptsim

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	corev1 "k8s.io/api/core/v1"
)

func desired(sets []policy.IPSet, rules ...policy.Rule) *policy.Desired {
	return &policy.Desired{
		Sets:   sets,
		Chains: []policy.Chain{{Family: policy.IPv4, Name: "PODWALL-IN-K", Direction: policy.Ingress, Rules: rules}},
		Pods: []policy.LocalPod{{
			Pod: policy.Ref{Namespace: "ns", Name: "p"}, Key: "K",
			IPs:          []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			IngressChain: "PODWALL-IN-K", EgressChain: "PODWALL-OUT-K",
		}},
	}
}

func ingress(t *testing.T, d *policy.Desired, src string, proto corev1.Protocol, port uint16) Hop {
	t.Helper()
	s, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Evaluate(Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: proto, DstPort: port})
	if err != nil {
		t.Fatal(err)
	}
	if v.Egress.Evaluated {
		t.Fatal("an outside source has no egress chain")
	}
	return v.Ingress
}

func TestHashNetLongestPrefixAndNomatch(t *testing.T) {
	d := desired([]policy.IPSet{{
		Name: "PODWALL-CIDR4-X", Family: policy.IPv4, Type: policy.SetHashNet,
		Members: []string{"10.0.0.0/8", "10.1.0.0/16 nomatch", "10.1.2.0/24", "10.1.2.3 nomatch"},
	}},
		policy.Rule{"-m", "set", "--match-set", "PODWALL-CIDR4-X", "src", "-j", "RETURN"},
		policy.Rule{"-j", "DROP"},
	)
	for src, want := range map[string]bool{
		"10.9.9.9": true,  // /8
		"10.1.9.9": false, // /16 nomatch
		"10.1.2.9": true,  // /24 inside the nomatch /16
		"10.1.2.3": false, // /32 nomatch
		"11.0.0.1": false, // outside
	} {
		if got := ingress(t, d, src, corev1.ProtocolTCP, 1).Allowed; got != want {
			t.Errorf("%s: allowed=%t, want %t", src, got, want)
		}
	}
}

func TestHashIPPortMatchesProtocolAndPort(t *testing.T) {
	d := desired([]policy.IPSet{{
		Name: "PODWALL-PORT4-X", Family: policy.IPv4, Type: policy.SetHashIPPort,
		Members: []string{"10.0.0.1,tcp:80", "10.0.0.1,sctp:81"},
	}},
		policy.Rule{"-m", "set", "--match-set", "PODWALL-PORT4-X", "dst,dst", "-j", "RETURN"},
		policy.Rule{"-j", "DROP"},
	)
	cases := []struct {
		proto corev1.Protocol
		port  uint16
		want  bool
	}{
		{corev1.ProtocolTCP, 80, true},
		{corev1.ProtocolUDP, 80, false},
		{corev1.ProtocolTCP, 81, false},
		{corev1.ProtocolSCTP, 81, true},
	}
	for _, c := range cases {
		if got := ingress(t, d, "192.0.2.1", c.proto, c.port).Allowed; got != c.want {
			t.Errorf("%s/%d: allowed=%t, want %t", c.proto, c.port, got, c.want)
		}
	}
}

func TestPortsMultiportAndTargets(t *testing.T) {
	d := desired(nil,
		policy.Rule{"-m", "comment", "--comment", "counts only"},
		policy.Rule{"-p", "udp", "-m", "multiport", "--dports", "53,100:200", "-j", "RETURN"},
		policy.Rule{"-p", "tcp", "-m", "tcp", "--dport", "443", "-j", "DROP"},
		policy.Rule{"-p", "tcp", "-j", "RETURN"},
	)
	check := func(proto corev1.Protocol, port uint16, allowed bool, rule int) {
		t.Helper()
		h := ingress(t, d, "192.0.2.1", proto, port)
		if h.Allowed != allowed || h.Rule != rule {
			t.Errorf("%s/%d: got %s, want allowed=%t by rule %d", proto, port, h, allowed, rule)
		}
	}
	check(corev1.ProtocolUDP, 53, true, 1)
	check(corev1.ProtocolUDP, 150, true, 1)
	check(corev1.ProtocolUDP, 201, true, -1) // falls off the end: implicit RETURN
	check(corev1.ProtocolTCP, 443, false, 2)
	check(corev1.ProtocolTCP, 444, true, 3)
}

func TestRejectsWhatTheKernelWouldNotTake(t *testing.T) {
	v4set := func(typ policy.SetType, members ...string) []policy.IPSet {
		return []policy.IPSet{{Name: "PODWALL-S", Family: policy.IPv4, Type: typ, Members: members}}
	}
	cases := []struct {
		name string
		sets []policy.IPSet
		rule policy.Rule
		want string
	}{
		{"hash:net /0", v4set(policy.SetHashNet, "0.0.0.0/0"), nil, "/0"},
		{"host bits", v4set(policy.SetHashNet, "10.0.0.1/8"), nil, "host bits"},
		{"same element twice", v4set(policy.SetHashNet, "10.0.0.0/8", "10.0.0.0/8 nomatch"), nil, "already"},
		{"IPv6 member in an IPv4 set", v4set(policy.SetHashIP, "fd00::1"), nil, "does not belong"},
		{"unknown set", nil, policy.Rule{"-m", "set", "--match-set", "NOPE", "src"}, "does not exist"},
		{"set of the other family", []policy.IPSet{{Name: "PODWALL-S", Family: policy.IPv6, Type: policy.SetHashIP}},
			policy.Rule{"-m", "set", "--match-set", "PODWALL-S", "src"}, "is IPv6"},
		{"wrong dimension", v4set(policy.SetHashIPPort), policy.Rule{"-m", "set", "--match-set", "PODWALL-S", "dst"}, "direction flags"},
		{"port match without protocol", nil, policy.Rule{"-m", "tcp", "--dport", "80"}, "needs -p tcp"},
		{"too many multiport slots", nil, policy.Rule{"-p", "tcp", "-m", "multiport", "--dports", "1:2,3:4,5:6,7:8,9:10,11:12,13:14,15:16"}, "more than 15"},
		{"ACCEPT would skip the peer's chain", nil, policy.Rule{"-j", "ACCEPT"}, "may only"},
		{"unknown argument", nil, policy.Rule{"-s", "10.0.0.0/8"}, "unsupported argument"},
		{"comment with a quote", nil, policy.Rule{"-m", "comment", "--comment", `say "hi"`}, "unquotable"},
	}
	for _, c := range cases {
		var rules []policy.Rule
		if c.rule != nil {
			rules = append(rules, c.rule)
		}
		_, err := New(desired(c.sets, rules...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

func TestBothHopsBetweenLocalPods(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	d := &policy.Desired{
		Chains: []policy.Chain{
			{Family: policy.IPv4, Name: "PODWALL-OUT-A", Rules: []policy.Rule{{"-j", "RETURN"}}},
			{Family: policy.IPv4, Name: "PODWALL-IN-A", Rules: []policy.Rule{{"-j", "DROP"}}},
			{Family: policy.IPv4, Name: "PODWALL-OUT-B", Rules: []policy.Rule{{"-j", "DROP"}}},
			{Family: policy.IPv4, Name: "PODWALL-IN-B", Rules: []policy.Rule{{"-j", "RETURN"}}},
		},
		Pods: []policy.LocalPod{
			{Pod: policy.Ref{Namespace: "n", Name: "a"}, IPs: []netip.Addr{a}, IngressChain: "PODWALL-IN-A", EgressChain: "PODWALL-OUT-A"},
			{Pod: policy.Ref{Namespace: "n", Name: "b"}, IPs: []netip.Addr{b}, IngressChain: "PODWALL-IN-B", EgressChain: "PODWALL-OUT-B"},
		},
	}
	s, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := s.Evaluate(Packet{Src: a, Dst: b, Protocol: corev1.ProtocolTCP, DstPort: 1})
	if !v.Allowed || !v.Egress.Evaluated || !v.Ingress.Evaluated {
		t.Errorf("a->b: %+v", v)
	}
	v, _ = s.Evaluate(Packet{Src: b, Dst: a, Protocol: corev1.ProtocolTCP, DstPort: 1})
	if v.Allowed || v.Egress.Allowed || v.Ingress.Allowed {
		t.Errorf("b->a: %+v", v)
	}
	if _, err := s.Evaluate(Packet{Src: a, Dst: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("mixed-family packet accepted")
	}
	if _, err := s.Evaluate(Packet{Src: netip.MustParseAddr("fd00::9"), Dst: netip.MustParseAddr("fd00::1")}); err != nil {
		t.Errorf("a packet between outside addresses: %v", err)
	}
}
