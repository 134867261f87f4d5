package dataplane

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestPodCommentRoundTrip(t *testing.T) {
	p := Pod{Key: "ABCDEFGHIJKLMNOP", Network: "podnet", ContainerID: "c0ffee", IfName: "eth0", Namespace: "x", Name: "a",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}, HostIface: "veth1", Layout: LayoutBridge}
	saved := `-m physdev --physdev-in veth1 -m comment --comment "` + podComment(p) + `" -j PODWALL-F-ABCDEFGHIJKLMNOP`
	got, ok := parsePodComment(saved)
	if !ok || !reflect.DeepEqual(got, p) {
		t.Errorf("round trip: %+v, %v", got, ok)
	}
	p.Namespace, p.Name, p.IPs = "", "", nil
	got, ok = parsePodComment(`-i veth1 -m comment --comment "` + podComment(p) + `" -j X`)
	if !ok || got.Namespace != "" || got.Name != "" || len(got.IPs) != 0 {
		t.Errorf("empty identity: %+v, %v", got, ok)
	}
}

func TestQuoteArgs(t *testing.T) {
	got := quoteArgs([]string{"-m", "comment", "--comment", `x/a ingress: "q"`, "-j", "DROP"})
	want := `-m comment --comment "x/a ingress: \"q\"" -j DROP`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestParseSave(t *testing.T) {
	tbl := parseSave("# c\n*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j X\nCOMMIT\n*filter\n:INPUT ACCEPT [1:2]\n:FORWARD DROP [0:0]\n:PODWALL-EGRESS - [0:0]\n-A PODWALL-EGRESS -i v -j PODWALL-F-K\nCOMMIT\n")
	if tbl.has("PREROUTING") || !tbl.has("PODWALL-EGRESS") || len(tbl.rules("PODWALL-EGRESS")) != 1 || !tbl.hasNonDefault() {
		t.Errorf("parsed %+v", tbl.chains)
	}
	if parseSave("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").hasNonDefault() {
		t.Error("default table reported non-default")
	}
}

func TestPodCommentFits(t *testing.T) {
	long := Pod{Key: "ABCDEFGHIJKLMNOP", Network: "podnet", ContainerID: strings.Repeat("0123456789abcdef", 4),
		IfName: "eth0", Namespace: "a-namespace-with-a-long-name", HostIface: "veth12345678", Layout: LayoutBridge,
		IPs: []netip.Addr{netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("fd00:64:ffff:ffff::2")}}
	for _, n := range []int{10, 80, 150, 253} {
		long.Name = strings.Repeat("n", n)
		c := podComment(long)
		if len(c) > maxComment {
			t.Errorf("name of %d: comment of %d characters", n, len(c))
		}
		got, ok := parsePodComment(`-m comment --comment "` + c + `" -j X`)
		if !ok || got.Key != long.Key || got.Network != long.Network || len(got.IPs) != 2 || got.HostIface != long.HostIface {
			t.Errorf("name of %d: parsed %+v", n, got)
		}
		if err := validatePod(long); err != nil {
			t.Errorf("name of %d: %v", n, err)
		}
	}
}
