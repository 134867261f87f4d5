package report

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
)

func mustConfig(t *testing.T, section string) *ipam.Config {
	t.Helper()
	cfg, err := ipam.ParseIPAM([]byte(section))
	if err != nil {
		t.Fatalf("ParseIPAM: %v", err)
	}
	return cfg
}

func owned(ip, container string) ipam.Reservation {
	return ipam.Reservation{IP: netip.MustParseAddr(ip), Owner: ipam.Attachment{ContainerID: container, IfName: "eth0"}, State: ipam.Owned}
}

func TestListClassifiesAndSorts(t *testing.T) {
	cfg := mustConfig(t, ipamSection)
	routes := []ipam.NodeRoute{
		{Dst: netip.MustParsePrefix("100.64.1.0/28"), LinkKind: "dummy", LinkName: "br-up", Table: 254},
		{Dst: netip.MustParsePrefix("100.64.1.0/24"), LinkKind: "bridge", LinkName: "cni0", Table: 254}, // the pod network's own
		{Dst: netip.MustParsePrefix("10.244.1.64/26"), LinkKind: "wireguard", LinkName: "wg0", Table: 254},
	}
	stores := []NetworkStore{
		{
			Network: "zeta", Config: nil,
			Scan: ipam.Scan{Reservations: []ipam.Reservation{owned("100.64.1.20", "z1")}},
		},
		{
			Network: "podnet", Config: cfg, Foreign: cfg.ForeignRoutes(routes, nil),
			Scan: ipam.Scan{
				Reservations: []ipam.Reservation{
					owned("fd00:64:1::2", "c6"),
					owned("100.64.1.100", "c100"),
					owned("100.64.1.9", "c9"),
					owned("100.64.1.20", "c20"),
					owned("10.244.1.5", "old"),
					owned("10.244.1.70", "old-wg"),
					owned("192.0.2.7", "gone"),
					{IP: netip.MustParseAddr("100.64.1.30"), State: ipam.Unreadable},
				},
				Problems: []string{"/d/podnet/ips/100.64.1.30: unreadable reservation; the address stays taken", "/d/podnet/ips/junk: not a reservation (name is not an address)"},
			},
		},
	}
	l := List(stores)
	want := []struct {
		network, ip, container string
		rng                    string
		state                  State
		detail                 string
	}{
		{"podnet", "10.244.1.5", "old", "10.244.1.0/24", StateDraining, ""},
		{"podnet", "10.244.1.70", "old-wg", "10.244.1.0/24", StateForeignRoute, "inside route 10.244.1.64/26 dev wg0"},
		{"podnet", "100.64.1.9", "c9", "100.64.1.0/24", StateForeignRoute, "inside route 100.64.1.0/28 dev br-up"},
		{"podnet", "100.64.1.20", "c20", "100.64.1.0/24", StateActive, ""},
		{"podnet", "100.64.1.30", "", "100.64.1.0/24", StateUnreadable, "reservation file is garbage; the address stays taken until GC"},
		{"podnet", "100.64.1.100", "c100", "100.64.1.0/24", StateActive, ""},
		{"podnet", "192.0.2.7", "gone", "", StateUnknownRange, ""},
		{"podnet", "fd00:64:1::2", "c6", "fd00:64:1::/64", StateActive, ""},
		{"zeta", "100.64.1.20", "z1", "", StateUnknownRange, "ranges unknown: no usable configuration"},
	}
	if len(l.Rows) != len(want) {
		t.Fatalf("got %d rows, want %d: %+v", len(l.Rows), len(want), l.Rows)
	}
	for i, w := range want {
		r := l.Rows[i]
		gotRange := ""
		if r.Range.IsValid() {
			gotRange = r.Range.String()
		}
		if r.Network != w.network || r.IP.String() != w.ip || r.ContainerID != w.container || gotRange != w.rng || r.State != w.state || r.Detail != w.detail {
			t.Errorf("row %d = %+v, want %+v", i, r, w)
		}
	}
	if len(l.Warnings) != 2 || !strings.HasPrefix(l.Warnings[1], "network podnet: /d/podnet/ips/junk") {
		t.Errorf("warnings = %q", l.Warnings)
	}
}

func TestListUnknownRangeInsideForeignRouteSaysSo(t *testing.T) {
	cfg := mustConfig(t, `{"ranges": [{"subnet": "100.64.1.0/24"}]}`)
	foreign := cfg.ForeignRoutes([]ipam.NodeRoute{{Dst: netip.MustParsePrefix("100.64.0.0/16"), LinkName: "eth1"}}, nil)
	l := List([]NetworkStore{{Network: "n", Config: cfg, Foreign: foreign, Scan: ipam.Scan{Reservations: []ipam.Reservation{owned("100.64.2.5", "c")}}}})
	if got := l.Rows[0]; got.State != StateUnknownRange || got.Detail != "inside route 100.64.0.0/16 dev eth1" {
		t.Errorf("got %+v", got)
	}
}

func sampleRows() []Row {
	return []Row{
		{Network: "podnet", IP: netip.MustParseAddr("100.64.1.2"), ContainerID: "abc", IfName: "eth0", Range: netip.MustParsePrefix("100.64.1.0/24"), State: StateActive},
		{Network: "podnet", IP: netip.MustParseAddr("100.64.1.3"), ContainerID: "defg", IfName: "net1", Range: netip.MustParsePrefix("100.64.1.0/24"), State: StateForeignRoute, Detail: "inside route 100.64.1.0/28 dev br-up"},
		{Network: "podnet", IP: netip.MustParseAddr("192.0.2.1"), State: StateUnreadable, Detail: "garbage"},
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, sampleRows()); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"IP          CONTAINER  IFNAME  NETWORK  RANGE          STATE          DETAIL\n" +
		"100.64.1.2  abc        eth0    podnet   100.64.1.0/24  active         -\n" +
		"100.64.1.3  defg       net1    podnet   100.64.1.0/24  foreign-route  inside route 100.64.1.0/28 dev br-up\n" +
		"192.0.2.1   -          -       podnet   -              unreadable     garbage\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestWriteTableEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "IP  CONTAINER  IFNAME  NETWORK  RANGE  STATE  DETAIL\n" {
		t.Errorf("got %q", got)
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, Listing{Rows: sampleRows(), Warnings: []string{"w1"}}); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Allocations []map[string]string `json:"allocations"`
		Warnings    []string            `json:"warnings"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, buf.String())
	}
	wantFirst := map[string]string{"ip": "100.64.1.2", "containerID": "abc", "ifname": "eth0", "network": "podnet", "range": "100.64.1.0/24", "state": "active"}
	if len(doc.Allocations) != 3 || !maps.Equal(doc.Allocations[0], wantFirst) {
		t.Errorf("allocations = %v", doc.Allocations)
	}
	if _, ok := doc.Allocations[2]["range"]; ok {
		t.Errorf("an address in no range must have no range key: %v", doc.Allocations[2])
	}
	if doc.Allocations[1]["detail"] != "inside route 100.64.1.0/28 dev br-up" {
		t.Errorf("detail = %q", doc.Allocations[1]["detail"])
	}
	if len(doc.Warnings) != 1 || doc.Warnings[0] != "w1" {
		t.Errorf("warnings = %q", doc.Warnings)
	}
}

func TestWriteJSONEmptyHasArrays(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, Listing{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(buf.String()), ""); got != `{"allocations":[],"warnings":[]}` {
		t.Errorf("got %s", got)
	}
}
