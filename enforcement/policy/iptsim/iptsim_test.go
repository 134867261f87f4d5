package iptsim

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
)

func desired(sets []ruleset.IPSet, rules ...ruleset.Rule) *ruleset.Desired {
	return &ruleset.Desired{
		Sets:   sets,
		Chains: []ruleset.Chain{{Family: ruleset.IPv4, Name: "PODWALL-IN-K", Direction: ruleset.Ingress, Rules: rules}},
		Pods: []ruleset.LocalPod{{
			Pod: ruleset.Ref{Namespace: "ns", Name: "p"}, Key: "K",
			IPs:          []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			IngressChain: "PODWALL-IN-K", EgressChain: "PODWALL-OUT-K",
		}},
	}
}

func ingress(t *testing.T, d *ruleset.Desired, src string, proto corev1.Protocol, port uint16) Hop {
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
	d := desired([]ruleset.IPSet{{
		Name: "PODWALL-CIDR4-X", Family: ruleset.IPv4, Type: ruleset.SetHashNet,
		Members: []string{"10.0.0.0/8", "10.1.0.0/16 nomatch", "10.1.2.0/24", "10.1.2.3 nomatch"},
	}},
		ruleset.Rule{"-m", "set", "--match-set", "PODWALL-CIDR4-X", "src", "-j", "RETURN"},
		ruleset.Rule{"-j", "DROP"},
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
	d := desired([]ruleset.IPSet{{
		Name: "PODWALL-PORT4-X", Family: ruleset.IPv4, Type: ruleset.SetHashIPPort,
		Members: []string{"10.0.0.1,tcp:80", "10.0.0.1,sctp:81"},
	}},
		ruleset.Rule{"-m", "set", "--match-set", "PODWALL-PORT4-X", "dst,dst", "-j", "RETURN"},
		ruleset.Rule{"-j", "DROP"},
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
		ruleset.Rule{"-m", "comment", "--comment", "counts only"},
		ruleset.Rule{"-p", "udp", "-m", "multiport", "--dports", "53,100:200", "-j", "RETURN"},
		ruleset.Rule{"-p", "tcp", "-m", "tcp", "--dport", "443", "-j", "DROP"},
		ruleset.Rule{"-p", "tcp", "-j", "RETURN"},
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
	v4set := func(typ ruleset.SetType, members ...string) []ruleset.IPSet {
		return []ruleset.IPSet{{Name: "PODWALL-S", Family: ruleset.IPv4, Type: typ, Members: members}}
	}
	cases := []struct {
		name string
		sets []ruleset.IPSet
		rule ruleset.Rule
		want string
	}{
		{"hash:net /0", v4set(ruleset.SetHashNet, "0.0.0.0/0"), nil, "/0"},
		{"host bits", v4set(ruleset.SetHashNet, "10.0.0.1/8"), nil, "host bits"},
		{"same element twice", v4set(ruleset.SetHashNet, "10.0.0.0/8", "10.0.0.0/8 nomatch"), nil, "already"},
		{"IPv6 member in an IPv4 set", v4set(ruleset.SetHashIP, "fd00::1"), nil, "does not belong"},
		{"unknown set", nil, ruleset.Rule{"-m", "set", "--match-set", "NOPE", "src"}, "does not exist"},
		{"set of the other family", []ruleset.IPSet{{Name: "PODWALL-S", Family: ruleset.IPv6, Type: ruleset.SetHashIP}},
			ruleset.Rule{"-m", "set", "--match-set", "PODWALL-S", "src"}, "is IPv6"},
		{"wrong dimension", v4set(ruleset.SetHashIPPort), ruleset.Rule{"-m", "set", "--match-set", "PODWALL-S", "dst"}, "direction flags"},
		{"port match without protocol", nil, ruleset.Rule{"-m", "tcp", "--dport", "80"}, "needs -p tcp"},
		{"too many multiport slots", nil, ruleset.Rule{"-p", "tcp", "-m", "multiport", "--dports", "1:2,3:4,5:6,7:8,9:10,11:12,13:14,15:16"}, "more than 15"},
		{"ACCEPT would skip the peer's chain", nil, ruleset.Rule{"-j", "ACCEPT"}, "may only"},
		{"unknown argument", nil, ruleset.Rule{"-s", "10.0.0.0/8"}, "unsupported argument"},
		{"comment with a quote", nil, ruleset.Rule{"-m", "comment", "--comment", `say "hi"`}, "unquotable"},
	}
	for _, c := range cases {
		var rules []ruleset.Rule
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
	d := &ruleset.Desired{
		Chains: []ruleset.Chain{
			{Family: ruleset.IPv4, Name: "PODWALL-OUT-A", Rules: []ruleset.Rule{{"-j", "RETURN"}}},
			{Family: ruleset.IPv4, Name: "PODWALL-IN-A", Rules: []ruleset.Rule{{"-j", "DROP"}}},
			{Family: ruleset.IPv4, Name: "PODWALL-OUT-B", Rules: []ruleset.Rule{{"-j", "DROP"}}},
			{Family: ruleset.IPv4, Name: "PODWALL-IN-B", Rules: []ruleset.Rule{{"-j", "RETURN"}}},
		},
		Pods: []ruleset.LocalPod{
			{Pod: ruleset.Ref{Namespace: "n", Name: "a"}, IPs: []netip.Addr{a}, IngressChain: "PODWALL-IN-A", EgressChain: "PODWALL-OUT-A"},
			{Pod: ruleset.Ref{Namespace: "n", Name: "b"}, IPs: []netip.Addr{b}, IngressChain: "PODWALL-IN-B", EgressChain: "PODWALL-OUT-B"},
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
