package filestore

import (
	"golang.org/x/sys/unix"

	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podwall/podwall/ipam"
)

var quiet = slog.New(slog.DiscardHandler)

func open(t *testing.T, dataDir string) *Store {
	t.Helper()
	st, err := Open(dataDir, "pods", quiet)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// write puts a regular file with content at path, replacing any entry there
// (garbage as an admin's editor or a broken disk would leave it).
func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

var (
	a1 = ipam.Attachment{ContainerID: "c1", IfName: "eth0"}
	a2 = ipam.Attachment{ContainerID: "c2", IfName: "eth0"}
)

func TestReserveIsExclusive(t *testing.T) {
	st := open(t, t.TempDir())
	ip := netip.MustParseAddr("10.0.0.5")
	if _, state, err := st.Owner(ip); err != nil || state != ipam.Free {
		t.Fatalf("fresh store: %v %v", state, err)
	}
	if err := st.Reserve(ip, a1); err != nil {
		t.Fatal(err)
	}
	if err := st.Reserve(ip, a2); !errors.Is(err, ipam.ErrReserved) {
		t.Fatalf("second Reserve: %v, want ErrReserved", err)
	}
	if err := st.Reserve(ip, a1); !errors.Is(err, ipam.ErrReserved) {
		t.Fatalf("Reserve by the owner again: %v, want ErrReserved", err)
	}
	if owner, state, err := st.Owner(ip); err != nil || state != ipam.Owned || owner != a1 {
		t.Fatalf("Owner: %v %v %v", owner, state, err)
	}
	if left := dirEntries(t, filepath.Join(st.Dir(), tmpDir)); len(left) != 0 {
		t.Errorf("tmp/ holds %v", left)
	}
	v6 := netip.MustParseAddr("fd00::5")
	if err := st.Reserve(v6, a2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := st.Release(ip); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
	if _, state, _ := st.Owner(ip); state != ipam.Free {
		t.Errorf("released address is %v", state)
	}
	if owner, _, _ := st.Owner(v6); owner != a2 {
		t.Errorf("v6 owner %v", owner)
	}
}

func TestReserveRaceHasOneWinner(t *testing.T) {
	dir := t.TempDir()
	ip := netip.MustParseAddr("10.0.0.9")
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = open(t, dir).Reserve(ip, ipam.Attachment{ContainerID: fmt.Sprint(i), IfName: "eth0"})
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ipam.ErrReserved):
			t.Errorf("unexpected %v", err)
		}
	}
	if wins != 1 {
		t.Errorf("%d winners", wins)
	}
}

func TestRecords(t *testing.T) {
	st := open(t, t.TempDir())
	if _, found, err := st.Record(a1); found || err != nil {
		t.Fatalf("fresh store: %v %v", found, err)
	}
	rec := ipam.Record{Attachment: a1, Allocations: []ipam.Allocation{
		{Address: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1")},
		{Address: netip.MustParsePrefix("fd00::5/64")},
	}}
	if err := st.PutRecord(rec); err != nil {
		t.Fatal(err)
	}
	got, found, err := st.Record(a1)
	if err != nil || !found || got.Attachment != a1 || !slices.Equal(got.Allocations, rec.Allocations) {
		t.Fatalf("Record: %+v %v %v", got, found, err)
	}
	rec.Allocations = rec.Allocations[:1]
	if err := st.PutRecord(rec); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := st.Record(a1); len(got.Allocations) != 1 {
		t.Errorf("replaced record %+v", got)
	}
	if _, found, _ := st.Record(a2); found {
		t.Errorf("record of another attachment found")
	}
	// IDs are not confused by the separator.
	if _, found, _ := st.Record(ipam.Attachment{ContainerID: "c1eth0", IfName: ""}); found {
		t.Errorf("record found under a different split of the same characters")
	}
	for i := 0; i < 2; i++ {
		if err := st.DeleteRecord(a1); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if _, found, _ := st.Record(a1); found {
		t.Errorf("deleted record found")
	}
}

func TestGarbageReservationStaysTaken(t *testing.T) {
	st := open(t, t.TempDir())
	for i, content := range []string{"", "garbage", `{"containerID":"c1"`, `{"containerID":"","ifname":"eth0"}`, `["c1","eth0"]`, "\x00\x00\x00"} {
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)})
		write(t, filepath.Join(st.Dir(), reservationsDir, ip.String()), content)
		owner, state, err := st.Owner(ip)
		if err != nil || state != ipam.Unreadable || owner != (ipam.Attachment{}) {
			t.Errorf("content %q: %v %v %v, want Unreadable", content, owner, state, err)
		}
		if err := st.Reserve(ip, a1); !errors.Is(err, ipam.ErrReserved) {
			t.Errorf("content %q: Reserve over garbage: %v", content, err)
		}
	}
}

func TestGarbageRecordIsUnreadable(t *testing.T) {
	st := open(t, t.TempDir())
	rec := ipam.Record{Attachment: a1, Allocations: []ipam.Allocation{{Address: netip.MustParsePrefix("10.0.0.5/24")}}}
	if err := st.PutRecord(rec); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(st.Dir(), recordsDir, recordName(a1))
	full, err := readEntry(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{
		string(full[:len(full)/2]), // truncated
		"",
		"{}",
		`{"containerID":"c2","ifname":"eth0","allocations":[]}`, // someone else's record under this name
		`{"containerID":"c1","ifname":"eth0","allocations":[{"address":"10.0.0.5"}]}`,
		`{"containerID":"c1","ifname":"eth0","allocations":[{}]}`,
	} {
		write(t, path, content)
		if _, found, err := st.Record(a1); !errors.Is(err, ipam.ErrUnreadable) || found {
			t.Errorf("content %q: found %v, err %v, want ErrUnreadable", content, found, err)
		}
	}
}

func TestCursor(t *testing.T) {
	st := open(t, t.TempDir())
	v4, v6 := netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00:64:1::/64")
	if c := st.Cursor(v4); c.IsValid() {
		t.Errorf("fresh cursor %v", c)
	}
	if err := st.SetCursor(v4, netip.MustParseAddr("10.0.0.7")); err != nil {
		t.Fatal(err)
	}
	if err := st.SetCursor(v6, netip.MustParseAddr("fd00:64:1::7")); err != nil {
		t.Fatal(err)
	}
	if c := st.Cursor(v4); c != netip.MustParseAddr("10.0.0.7") {
		t.Errorf("v4 cursor %v", c)
	}
	if c := st.Cursor(v6); c != netip.MustParseAddr("fd00:64:1::7") {
		t.Errorf("v6 cursor %v", c)
	}
	if c := st.Cursor(netip.MustParsePrefix("10.0.1.0/24")); c.IsValid() {
		t.Errorf("cursor of another range: %v", c)
	}
	path := filepath.Join(st.Dir(), cursorsDir, cursorName(v4))
	for _, content := range []string{"", "garbage", "10.0.0", "10.0.1.7", "fd00::1", "10.0.0.7 10.0.0.8"} {
		write(t, path, content)
		if c := st.Cursor(v4); c.IsValid() {
			t.Errorf("cursor content %q gave %v, want the zero Addr", content, c)
		}
	}
}

func TestScanReportsGarbageAndKeepsReservations(t *testing.T) {
	st := open(t, t.TempDir())
	good := map[netip.Addr]ipam.Attachment{netip.MustParseAddr("10.0.0.2"): a1, netip.MustParseAddr("fd00::2"): a1, netip.MustParseAddr("10.0.0.3"): a2}
	for ip, a := range good {
		if err := st.Reserve(ip, a); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []ipam.Attachment{a1, a2} {
		if err := st.PutRecord(ipam.Record{Attachment: a}); err != nil {
			t.Fatal(err)
		}
	}
	res := filepath.Join(st.Dir(), reservationsDir)
	write(t, filepath.Join(res, "10.0.0.4"), "garbage")       // garbage content: still a reservation
	write(t, filepath.Join(res, "fd00::4"), `{"containerID"`) // truncated
	write(t, filepath.Join(res, "not-an-address"), "{}")
	write(t, filepath.Join(res, "FD00::5"), `{"containerID":"c9","ifname":"eth0"}`) // not the canonical name
	write(t, filepath.Join(res, "010.0.0.6"), `{"containerID":"c9","ifname":"eth0"}`)
	recs := filepath.Join(st.Dir(), recordsDir)
	write(t, filepath.Join(recs, "junk"), "{}")
	write(t, filepath.Join(recs, recordName(ipam.Attachment{ContainerID: "c3", IfName: "eth0"})), `{"containerID":"c3","ifn`)
	// A readable record filed under another attachment's name.
	write(t, filepath.Join(recs, recordName(ipam.Attachment{ContainerID: "c4", IfName: "eth0"})), `{"containerID":"c5","ifname":"eth0","allocations":[]}`)

	scan, err := st.Scan()
	if err != nil {
		t.Fatalf("Scan failed on garbage: %v", err)
	}
	got := map[netip.Addr]ipam.Reservation{}
	for _, r := range scan.Reservations {
		got[r.IP] = r
	}
	for ip, a := range good {
		if r := got[ip]; r.State != ipam.Owned || r.Owner != a {
			t.Errorf("%s: %+v, want owned by %v", ip, r, a)
		}
	}
	for _, ip := range []string{"10.0.0.4", "fd00::4"} {
		if r, ok := got[netip.MustParseAddr(ip)]; !ok || r.State != ipam.Unreadable {
			t.Errorf("garbage reservation %s dropped or misread: %+v", ip, r)
		}
	}
	if len(scan.Reservations) != 5 {
		t.Errorf("reservations %+v", scan.Reservations)
	}
	if len(scan.Records) != 2 {
		t.Errorf("records %+v", scan.Records)
	}
	problems := strings.Join(scan.Problems, "\n")
	for _, name := range []string{"10.0.0.4", "fd00::4", "not-an-address", "FD00::5", "010.0.0.6", "junk",
		recordName(ipam.Attachment{ContainerID: "c3", IfName: "eth0"}), recordName(ipam.Attachment{ContainerID: "c4", IfName: "eth0"})} {
		if !strings.Contains(problems, name) {
			t.Errorf("problems do not name %s:\n%s", name, problems)
		}
	}
	if len(scan.Problems) != 8 {
		t.Errorf("%d problems:\n%s", len(scan.Problems), problems)
	}
}

func TestOddEntriesInReservations(t *testing.T) {
	st := open(t, t.TempDir())
	res := filepath.Join(st.Dir(), reservationsDir)
	dirIP, linkIP, fifoIP := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.4")
	if err := os.Mkdir(filepath.Join(res, dirIP.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	// A fifo would block a plain read forever.
	if err := unix.Mkfifo(filepath.Join(res, fifoIP.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent/podwall", filepath.Join(res, linkIP.String())); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []netip.Addr{dirIP, linkIP, fifoIP} {
		if _, state, err := st.Owner(ip); err != nil || state != ipam.Unreadable {
			t.Errorf("%s: %v %v, want Unreadable: the name is taken", ip, state, err)
		}
	}
	scan, err := st.Scan()
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if len(scan.Reservations) != 3 || len(scan.Problems) != 3 {
		t.Errorf("scan %+v", scan)
	}
	// The allocator walks past them instead of failing every ADD.
	cfg, err := ipam.ParseIPAM([]byte(`{"ranges":[{"subnet":"10.0.0.0/29"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ipam.Allocate(st, cfg, a1, nil)
	if err != nil {
		t.Fatalf("ADD past odd entries: %v", err)
	}
	if got := rec.Allocations[0].Address.Addr(); got != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("got %s", got)
	}
}

func TestAllocatorOverGarbageFiles(t *testing.T) {
	st := open(t, t.TempDir())
	cfg, err := ipam.ParseIPAM([]byte(`{"ranges":[{"subnet":"10.0.0.0/29"},{"subnet":"fd00::/125"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(st.Dir(), reservationsDir, "10.0.0.2"), "garbage")
	first, err := ipam.Allocate(st, cfg, a1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Allocations[0].Address.Addr(); got != netip.MustParseAddr("10.0.0.3") {
		t.Errorf("got %s past a garbage reservation", got)
	}
	// Truncate a1's record: a retry must find the same addresses, no more.
	path := filepath.Join(st.Dir(), recordsDir, recordName(a1))
	write(t, path, `{"containerID":"c1","ifname":"eth0","alloc`)
	again, err := ipam.Allocate(st, cfg, a1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Allocations, first.Allocations) {
		t.Errorf("retry over a truncated record gave %v, want %v", again.Allocations, first.Allocations)
	}
	if err := ipam.Check(st, a1, []netip.Addr{first.Allocations[0].Address.Addr(), first.Allocations[1].Address.Addr()}); err != nil {
		t.Errorf("CHECK after recovery: %v", err)
	}
	write(t, path, "")
	if err := ipam.Release(st, a1); err != nil {
		t.Fatal(err)
	}
	scan, err := st.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Reservations) != 1 || scan.Reservations[0].State != ipam.Unreadable || len(scan.Records) != 0 {
		t.Errorf("after DEL: %+v", scan)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("garbage record of the deleted attachment left: %v", err)
	}
}

func TestLockExcludes(t *testing.T) {
	dir := t.TempDir()
	s1, s2 := open(t, dir), open(t, dir)
	unlock, err := s1.Lock(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if u, err := s2.Lock(50 * time.Millisecond); err == nil {
		u()
		t.Fatal("second locker got the lock while the first held it")
	} else if !strings.Contains(err.Error(), "still held") {
		t.Errorf("error %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timed out after %s", d)
	}
	unlock()
	// The lock is free again, also for this process: a timed-out waiter must
	// not keep it once it gets it.
	for i := 0; i < 3; i++ {
		u, err := open(t, dir).Lock(2 * time.Second)
		if err != nil {
			t.Fatalf("lock %d after release: %v", i, err)
		}
		u()
	}
}

func TestLockWaitsForRelease(t *testing.T) {
	dir := t.TempDir()
	unlock, err := open(t, dir).Lock(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := open(t, dir).Lock(5 * time.Second)
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned while the first held it: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
}

func TestConcurrentAllocationsAreDistinct(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ipam.ParseIPAM([]byte(`{"ranges":[{"subnet":"100.64.1.0/24"},{"subnet":"fd00:64:1::/64"}],
		"exclude":["100.64.1.128/26"],"dataDir":"` + dir + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	const n = 150
	recs := make([]ipam.Record, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := Open(dir, "pods", quiet) // one Store each, as separate processes would have
			if err != nil {
				errs[i] = err
				return
			}
			unlock, err := st.Lock(10 * time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			defer unlock()
			recs[i], errs[i] = ipam.Allocate(st, cfg, ipam.Attachment{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"}, nil)
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	excluded := netip.MustParsePrefix("100.64.1.128/26")
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		if len(recs[i].Allocations) != 2 {
			t.Fatalf("ADD %d: %v", i, recs[i].Allocations)
		}
		for _, a := range recs[i].Allocations {
			ip := a.Address.Addr()
			if prev, dup := seen[ip]; dup {
				t.Errorf("%s handed to %d and %d", ip, prev, i)
			}
			if excluded.Contains(ip) {
				t.Errorf("%s is excluded", ip)
			}
			seen[ip] = i
		}
	}
	scan, err := open(t, dir).Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Reservations) != 2*n || len(scan.Records) != n || len(scan.Problems) != 0 {
		t.Errorf("scan: %d reservations, %d records, problems %v", len(scan.Reservations), len(scan.Records), scan.Problems)
	}
	if left := dirEntries(t, filepath.Join(dir, "pods", tmpDir)); len(left) != 0 {
		t.Errorf("tmp/ holds %d files", len(left))
	}
}

func TestSnapshotProbeAndTemp(t *testing.T) {
	dataDir := t.TempDir()
	st := open(t, dataDir)
	if err := st.WriteSnapshot([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteSnapshot([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if data, err := st.Snapshot(); err != nil || string(data) != "{}\n" {
		t.Errorf("snapshot %q %v", data, err)
	}
	if err := st.Probe(); err != nil {
		t.Errorf("Probe: %v", err)
	}
	write(t, filepath.Join(st.Dir(), tmpDir, "w-123"), "left by a killed writer")
	if err := st.RemoveStaleTemp(); err != nil {
		t.Fatal(err)
	}
	if left := dirEntries(t, filepath.Join(st.Dir(), tmpDir)); len(left) != 0 {
		t.Errorf("tmp/ holds %v", left)
	}
	if _, err := OpenExisting(st.Dir(), quiet); err != nil {
		t.Errorf("OpenExisting: %v", err)
	}
	if _, err := OpenExisting(filepath.Join(dataDir, "other"), quiet); err == nil {
		t.Errorf("OpenExisting of a missing network succeeded")
	}
	if NetworkDir("/var/lib/podwall/ipam", "pods") != "/var/lib/podwall/ipam/pods" {
		t.Errorf("NetworkDir %s", NetworkDir("/var/lib/podwall/ipam", "pods"))
	}
}
