package main

import (
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/filestore"
	"github.com/podwall/podwall/ipam/report"
)

const (
	oldRangeOnly = `{"type": "podwall-ipam", "ranges": [{"subnet": "10.244.1.0/24"}]}`
	migrating    = `{"type": "podwall-ipam",
		"ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"}],
		"exclude": ["100.64.1.128/26"], "serviceCIDRs": ["10.96.0.0/12"]}`
)

// migratedDataDir builds a data dir as a migration leaves it: two pods from
// the old range, now draining, 20 from the new one, a reservation from a range
// since removed, and garbage. A second network has no snapshot yet.
func migratedDataDir(t *testing.T) string {
	t.Helper()
	dataDir := t.TempDir()
	allocate(t, dataDir, parseConfig(t, "podnet", oldRangeOnly), containerNames("old", 2)...) // 10.244.1.2-3
	allocate(t, dataDir, parseConfig(t, "podnet", migrating), containerNames("new", 20)...)   // 100.64.1.2-21

	st, err := filestore.OpenExisting(filepath.Join(dataDir, "podnet"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Reserve(netip.MustParseAddr("192.0.2.7"), ipam.Attachment{ContainerID: "removed", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dataDir, "podnet", "ips", "100.64.1.250"), `{"containerID": "trunc`)
	writeFile(t, filepath.Join(dataDir, "podnet", "ips", "not-an-ip"), "{}")
	writeFile(t, filepath.Join(dataDir, "podnet", "attachments", "0123456789abcdef0123456789abcdef01234567"), "\x00\x00")

	other, err := filestore.Open(dataDir, "other", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Reserve(netip.MustParseAddr("10.0.0.5"), ipam.Attachment{ContainerID: "o1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dataDir, "lost+found", "x"), "")
	return dataDir
}

var fakeNode = []ipam.NodeRoute{
	nodeRoute("0.0.0.0/0", "ether", "eth0"),
	nodeRoute("100.64.1.0/24", "bridge", "cni0"), // the pod bridge: our own
	nodeRoute("100.64.1.0/28", "dummy", "br-up"), // a foreign route inside the range
}

func TestListDataDir(t *testing.T) {
	dataDir := migratedDataDir(t)
	before := treeState(t, dataDir)
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", dataDir, "-o", "json")
	if r.code != exitOK {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	l := decodeListing(t, r.stdout)

	var got []string
	for _, a := range l.Allocations {
		got = append(got, a.Network+" "+a.IP+" "+string(a.State))
	}
	want := []string{
		"other 10.0.0.5 unknown-range",
		"podnet 10.244.1.2 draining",
		"podnet 10.244.1.3 draining",
	}
	for i := 2; i <= 15; i++ {
		want = append(want, "podnet 100.64.1."+strconv.Itoa(i)+" foreign-route")
	}
	for i := 16; i <= 21; i++ {
		want = append(want, "podnet 100.64.1."+strconv.Itoa(i)+" active")
	}
	want = append(want, "podnet 100.64.1.250 unreadable", "podnet 192.0.2.7 unknown-range")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("listed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	first := l.Allocations[1]
	if first.ContainerID != "old00" || first.IfName != "eth0" || first.Range != "10.244.1.0/24" {
		t.Errorf("first podnet row = %+v", first)
	}
	for _, a := range l.Allocations {
		if a.State == report.StateForeignRoute && a.Detail != "inside route 100.64.1.0/28 dev br-up" {
			t.Errorf("foreign-route row without its route: %+v", a)
		}
	}

	warnings := strings.Join(l.Warnings, "\n")
	for _, w := range []string{
		"lost+found is not a podwall-ipam network directory",
		"network other: no config.json yet",
		"podnet/ips/not-an-ip: not a reservation",
		"podnet/ips/100.64.1.250: unreadable reservation",
		"podnet/attachments/0123456789abcdef0123456789abcdef01234567: unreadable attachment record",
	} {
		if !strings.Contains(warnings, w) {
			t.Errorf("no warning containing %q in\n%s", w, warnings)
		}
		if !strings.Contains(r.stderr, "warning: ") || !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks warning %q:\n%s", w, r.stderr)
		}
	}
	if after := treeState(t, dataDir); !maps.Equal(before, after) {
		t.Errorf("list changed the data dir:\nbefore %v\nafter  %v", before, after)
	}
}

func TestListOneNetworkDirAsTable(t *testing.T) {
	dataDir := migratedDataDir(t)
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", filepath.Join(dataDir, "podnet"))
	if r.code != exitOK {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 1+2+20+2 {
		t.Fatalf("got %d lines:\n%s", len(lines), r.stdout)
	}
	if fields := strings.Fields(lines[0]); strings.Join(fields, " ") != "IP CONTAINER IFNAME NETWORK RANGE STATE DETAIL" {
		t.Errorf("header = %q", lines[0])
	}
	wantRows := map[int]string{
		1:  "10.244.1.2 old00 eth0 podnet 10.244.1.0/24 draining -",
		3:  "100.64.1.2 new00 eth0 podnet 100.64.1.0/24 foreign-route inside route 100.64.1.0/28 dev br-up",
		17: "100.64.1.16 new14 eth0 podnet 100.64.1.0/24 active -",
		23: "100.64.1.250 - - podnet 100.64.1.0/24 unreadable reservation file is garbage; the address stays taken until GC",
		24: "192.0.2.7 removed eth0 podnet - unknown-range -",
	}
	for i, want := range wantRows {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want {
			t.Errorf("line %d = %q, want %q", i, got, want)
		}
	}
	if strings.Contains(r.stdout, "other") {
		t.Errorf("listed another network:\n%s", r.stdout)
	}
}

func TestListWithConfigOverride(t *testing.T) {
	dataDir := migratedDataDir(t)
	// The admin's next step: the new range drains too, a third one arrives.
	conflist := writeFile(t, filepath.Join(t.TempDir(), "10-podnet.conflist"), `{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
		{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipam": {"type": "podwall-ipam",
			"ranges": [{"subnet": "100.64.1.0/24", "draining": true}, {"subnet": "100.65.0.0/24"}]}},
		{"type": "portmap", "capabilities": {"portMappings": true}}]}`)
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", dataDir, "--config", conflist, "-o", "json")
	if r.code != exitOK {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	l := decodeListing(t, r.stdout)
	for ip, want := range map[string]report.State{
		"10.244.1.2":  report.StateUnknownRange, // no longer configured
		"100.64.1.3":  report.StateForeignRoute, // foreign wins over draining
		"100.64.1.20": report.StateDraining,
		"10.0.0.5":    "", // network "other" is not the conflist's
	} {
		if got := l.stateOf(ip); got != want {
			t.Errorf("%s: state %q, want %q", ip, got, want)
		}
	}
}

func TestListConfigForAbsentNetwork(t *testing.T) {
	dataDir := migratedDataDir(t)
	netconf := writeFile(t, filepath.Join(t.TempDir(), "n.conf"), `{"name": "elsewhere", "type": "ptp", "ipam": `+migrating+`}`)
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", dataDir, "--config", netconf)
	if r.code != exitOK || !strings.Contains(r.stderr, `no directory for network "elsewhere"`) {
		t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("want the header alone, got:\n%s", r.stdout)
	}
}

func TestListInvalidConfigExits2(t *testing.T) {
	dataDir := migratedDataDir(t)
	bad := writeFile(t, filepath.Join(t.TempDir(), "ipam.json"), `{"ranges": [{"subnet": "10.0.0.0/8"}], "serviceCIDRs": ["10.96.0.0/12"]}`)
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", dataDir, "--config", bad)
	if r.code != exitUsage || !strings.Contains(r.stderr, "range 10.0.0.0/8 overlaps service CIDR 10.96.0.0/12 (CNI error code 7)") {
		t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func TestListRefusesWithoutRoutes(t *testing.T) {
	dataDir := migratedDataDir(t)
	var stdout, stderr strings.Builder
	a := &app{stdout: &stdout, stderr: &stderr, readRoutes: func(func(netip.Prefix) bool) ([]ipam.NodeRoute, error) {
		return nil, errTest
	}}
	if code := a.main([]string{"ipam", "list", "--data-dir", dataDir}); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if stdout.Len() != 0 || !strings.Contains(stderr.String(), "reading this node's routes: test failure") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("test failure")

func TestListGarbageInOneNetworkIsReportedNotFatal(t *testing.T) {
	dataDir := migratedDataDir(t)
	// A directory where a record should be: reported, never fatal.
	if err := os.MkdirAll(filepath.Join(dataDir, "other", "attachments", "subdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	r := runWithRoutes(fakeNode, "ipam", "list", "--data-dir", dataDir, "-o", "json")
	if r.code != 0 || !strings.Contains(r.stderr, "not an attachment record") {
		t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if l := decodeListing(t, r.stdout); l.stateOf("100.64.1.20") != report.StateActive {
		t.Errorf("podnet not listed:\n%s", r.stdout)
	}
}
