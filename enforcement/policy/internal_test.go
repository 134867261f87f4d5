package policy

import (
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSanitizeComment(t *testing.T) {
	if got := sanitizeComment("a \"b\"\n\\c"); got != "a 'b' 'c" {
		t.Errorf("got %q", got)
	}
	long := strings.Repeat("é", 200) // 400 bytes
	got := sanitizeComment(long)
	if len(got) > maxComment || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("long comment: %d bytes, valid=%t: %q", len(got), utf8.ValidString(got), got)
	}
}

func TestCanonicalSelectors(t *testing.T) {
	parse := func(ls *metav1.LabelSelector) string {
		t.Helper()
		s, err := parseSelector(ls)
		if err != nil {
			t.Fatal(err)
		}
		return s.canon
	}
	a := parse(&metav1.LabelSelector{
		MatchLabels: map[string]string{"b": "2", "a": "1"},
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "c", Operator: metav1.LabelSelectorOpIn, Values: []string{"y", "x", "x"}},
			{Key: "d", Operator: metav1.LabelSelectorOpDoesNotExist},
		},
	})
	b := parse(&metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "d", Operator: metav1.LabelSelectorOpDoesNotExist},
			{Key: "c", Operator: metav1.LabelSelectorOpIn, Values: []string{"x", "y"}},
		},
		MatchLabels: map[string]string{"a": "1", "b": "2"},
	})
	if a != b || a != "!d,a=1,b=2,c in (x,y)" {
		t.Errorf("canonical forms %q and %q", a, b)
	}
	if parse(nil) != "" || parse(&metav1.LabelSelector{}) != "" {
		t.Error("nil and empty selectors should both mean everything")
	}
}

func TestPortMatchesChunking(t *testing.T) {
	var ranges []portRange
	for p := uint16(1); p <= 40; p += 2 { // 20 single ports
		ranges = append(ranges, portRange{p, p})
	}
	ranges = append(ranges, portRange{100, 200}, portRange{150, 300}, portRange{301, 310})
	got := portMatches(map[corev1.Protocol]bool{corev1.ProtocolUDP: true},
		map[corev1.Protocol][]portRange{corev1.ProtocolTCP: ranges, corev1.ProtocolUDP: {{5, 5}}, corev1.ProtocolSCTP: {{7, 9}}})
	var lines []string
	for _, m := range got {
		lines = append(lines, m.proto+" "+strings.Join(m.args, " "))
	}
	want := []string{
		"tcp -m multiport --dports 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29",
		"tcp -m multiport --dports 31,33,35,37,39,100:310",
		"udp ",
		"sctp -m sctp --dport 7:9",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

func TestCIDRMembers(t *testing.T) {
	block := func(cidr string, except ...string) *ipBlock {
		t.Helper()
		b, err := parseIPBlock(&networkingv1.IPBlock{CIDR: cidr, Except: except})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		b    *ipBlock
		want string
	}{
		{block("10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/16"), "10.0.0.0/8 10.1.0.0/16 nomatch"},
		{block("0.0.0.0/0"), "0.0.0.0/1 128.0.0.0/1"},
		{block("0.0.0.0/0", "128.0.0.0/1", "10.0.0.1/32"), "0.0.0.0/1 10.0.0.1 nomatch 128.0.0.0/1 nomatch"},
		{block("::/0", "fd00::/8"), "::/1 8000::/1 fd00::/8 nomatch"},
		{block("fd00::1/128"), "fd00::1"},
	}
	for _, c := range cases {
		if got := strings.Join(cidrMembers(c.b), " "); got != c.want {
			t.Errorf("%s: got %q, want %q", c.b.desc, got, c.want)
		}
	}
	if !block("0.0.0.0/0", "10.0.0.0/8").contains(netip.MustParseAddr("11.0.0.1")) {
		t.Error("contains")
	}
}
