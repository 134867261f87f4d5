package nodecidrs

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
	cidrsfile "github.com/podwall/podwall/ipam/nodecidrs"
)

// written reads the file back as podwall-ipam does.
func written(t *testing.T, path string) cidrsfile.File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := cidrsfile.Parse(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

func route(dst, kind, name string) ipam.NodeRoute {
	return ipam.NodeRoute{Dst: netip.MustParsePrefix(dst), LinkKind: kind, LinkName: name, Table: 254}
}

func TestConflicts(t *testing.T) {
	pod := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	tests := []struct {
		name   string
		routes []ipam.NodeRoute
		want   []string
	}{
		{"none", nil, nil},
		{"our own bridge's connected route", []ipam.NodeRoute{route("10.244.1.0/24", "bridge", "cni0")}, nil},
		{"host routes to pods through veths", []ipam.NodeRoute{route("10.244.1.7/32", "veth", "veth1")}, nil},
		{"default routes", []ipam.NodeRoute{route("0.0.0.0/0", "", ""), route("::/0", "", "")}, nil},
		{"elsewhere", []ipam.NodeRoute{route("192.168.0.0/16", "", "eth0")}, nil},
		{"corporate route around it", []ipam.NodeRoute{route("10.0.0.0/8", "", "eth0")},
			[]string{"pod CIDR 10.244.1.0/24 lies inside the node's route 10.0.0.0/8 dev eth0"}},
		{"a host route into it", []ipam.NodeRoute{route("10.244.1.9/32", "", "tun0")},
			[]string{"pod CIDR 10.244.1.0/24 contains the node's route 10.244.1.9/32 dev tun0"}},
		{"a bridge carrying it that is a wider network", []ipam.NodeRoute{route("10.244.0.0/16", "bridge", "docker0")},
			[]string{"pod CIDR 10.244.1.0/24 lies inside the node's route 10.244.0.0/16 dev docker0"}},
		{"IPv6", []ipam.NodeRoute{route("fd00::/8", "", "vpn")},
			[]string{"pod CIDR fd00:10:244:1::/64 lies inside the node's route fd00::/8 dev vpn"}},
	}
	for _, tc := range tests {
		var got []string
		for _, c := range Conflicts(pod, tc.routes) {
			got = append(got, c.String())
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

type postedEvent struct{ eventType, reason, message string }

func TestWatcherWritesTheFileAndRaisesConflictsOncePerChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node-podcidrs.json")
	cidrs, known := []string{"10.244.1.0/24"}, false
	var routes []ipam.NodeRoute
	var routesErr error
	var events []postedEvent
	var gauge []int
	postErr := error(nil)
	w, err := NewWatcher(Config{
		Path: path, Node: "node-1",
		PodCIDRs: func() ([]string, bool) { return cidrs, known },
		Routes:   func() ([]ipam.NodeRoute, error) { return routes, routesErr },
		Event: func(_ context.Context, eventType, reason, message string) error {
			if postErr != nil {
				return postErr
			}
			events = append(events, postedEvent{eventType, reason, message})
			return nil
		},
		Conflicts: func(n int) { gauge = append(gauge, n) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	w.Check(ctx) // the Node not known yet: nothing written
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file written before the Node is known: %v", err)
	}
	known = true
	w.Check(ctx)
	if f := written(t, path); f.PodCIDRs[0] != "10.244.1.0/24" {
		t.Fatalf("file: %+v", f)
	}
	if len(events) != 0 || gauge[len(gauge)-1] != 0 {
		t.Fatalf("no conflict, yet events %v, gauge %v", events, gauge)
	}

	routes = []ipam.NodeRoute{route("10.0.0.0/8", "", "eth0")}
	postErr = errors.New("forbidden")
	w.Check(ctx) // posting fails: posted at the next check
	postErr = nil
	w.Check(ctx)
	w.Check(ctx) // unchanged: not posted again
	if len(events) != 1 || events[0].eventType != "Warning" || events[0].reason != ReasonConflict ||
		!strings.Contains(events[0].message, "10.0.0.0/8") {
		t.Fatalf("events %+v", events)
	}
	if gauge[len(gauge)-1] != 1 {
		t.Errorf("gauge %v", gauge)
	}

	routesErr = errors.New("netlink down")
	w.Check(ctx) // routes unreadable: nothing changes
	routesErr = nil
	routes = nil
	w.Check(ctx)
	if len(events) != 2 || events[1].eventType != "Normal" || events[1].reason != ReasonResolved || gauge[len(gauge)-1] != 0 {
		t.Fatalf("after resolution: events %+v, gauge %v", events, gauge)
	}

	cidrs = []string{"10.244.2.0/24"}
	w.Check(ctx)
	if f := written(t, path); f.PodCIDRs[0] != "10.244.2.0/24" {
		t.Errorf("changed CIDRs not written: %+v", f)
	}
	cidrs = []string{"10.244.2.1/24"} // host bits: written canonical
	w.Check(ctx)
	if f := written(t, path); f.PodCIDRs[0] != "10.244.2.0/24" {
		t.Errorf("CIDR not canonical: %+v", f)
	}
	cidrs = []string{"bogus"}
	w.Check(ctx)
	if f := written(t, path); f.PodCIDRs[0] != "10.244.2.0/24" {
		t.Errorf("an invalid CIDR replaced the file: %+v", f)
	}
}
