// Package filestore keeps podwall-ipam's allocations in a data directory, one
// entry per reserved address and one per attachment, so that every operation
// touches a constant number of entries (no scan of the directory).
//
// Each entry is a symbolic link whose target is its content (JSON). symlink(2)
// creates the name and its content in one atomic step and fails if the name
// exists; readlink(2) reads it in one call. So a process killed at any instant
// leaves either no entry or a whole one, never a torn or empty file, and an
// ADD costs two directory insertions instead of the create-write-link-unlink
// dance of regular files: under hundreds of concurrent ADDs, directory locks
// and inode allocation are where the time goes. Regular files found in the
// directory (garbage, or hand-made) are still read.
//
// Durability across power loss is not sought: pod network namespaces do not
// survive a reboot, and the runtime's GC reconciles what remains.
package filestore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podwall/podwall/ipam"
)

const (
	reservationsDir = "ips"
	recordsDir      = "attachments"
	cursorsDir      = "cursors"
	tmpDir          = "tmp"
	lockFile        = "lock"
	// SnapshotFile holds the last configuration the plugin ran with, so that
	// podwallctl can tell ranges and their state from the data dir alone.
	SnapshotFile = "config.json"
)

// Store is an ipam.Store in one network's directory.
type Store struct {
	dir string
	log *slog.Logger
}

var _ ipam.Store = (*Store)(nil)

// NetworkDir is where a network's allocations live under dataDir.
func NetworkDir(dataDir, network string) string { return filepath.Join(dataDir, network) }

// Open prepares the network's directory under dataDir.
func Open(dataDir, network string, log *slog.Logger) (*Store, error) {
	dir := NetworkDir(dataDir, network)
	for _, sub := range []string{reservationsDir, recordsDir, cursorsDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("preparing data dir %s: %w", dir, err)
		}
	}
	return &Store{dir: dir, log: log}, nil
}

// OpenExisting opens a network directory for reading without creating anything.
func OpenExisting(dir string, log *slog.Logger) (*Store, error) {
	if _, err := os.Stat(filepath.Join(dir, reservationsDir)); err != nil {
		return nil, fmt.Errorf("%s is not a podwall-ipam network directory: %w", dir, err)
	}
	return &Store{dir: dir, log: log}, nil
}

// Dir is the network directory.
func (s *Store) Dir() string { return s.dir }

// Lock takes the whole store exclusively (GC), waiting at most timeout for
// every operation in flight to finish. The kernel drops locks when a process
// dies, so a killed plugin never wedges the node.
func (s *Store) Lock(timeout time.Duration) (unlock func(), err error) {
	return s.lockRange(0, 0, timeout)
}

// attachmentLockSlots is how many byte-range slots attachments hash to.
// Operations on different attachments almost never share one, so they run
// in parallel; the same attachment always maps to the same slot.
const attachmentLockSlots = 1 << 20

// LockAttachment excludes other operations on att, and GC, but not
// operations on other attachments: allocations race only at the atomic
// reservation link, which decides. One shared lock for every ADD would make
// hundreds of concurrent ADDs queue behind whichever holder the scheduler
// preempted.
func (s *Store) LockAttachment(att ipam.Attachment, timeout time.Duration) (unlock func(), err error) {
	sum := sha256.Sum256([]byte(att.ContainerID + "\x00" + att.IfName))
	slot := int64(binary.BigEndian.Uint32(sum[:4]) % attachmentLockSlots)
	return s.lockRange(slot+1, 1, timeout)
}

// lockRange takes an open-file-description write lock on [start, start+len)
// of the lock file (len 0: to the end, the whole file from 0).
func (s *Store) lockRange(start, length int64, timeout time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock: %w", err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: start, Len: length}
	// Uncontended, the lock is taken without a waiting goroutine.
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err == nil {
		return func() { f.Close() }, nil
	}
	done := make(chan error, 1)
	go func() {
		for {
			err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLKW, &lk)
			if !errors.Is(err, unix.EINTR) {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", s.dir, err)
		}
		return func() { f.Close() }, nil
	case <-time.After(timeout):
		// Closing the file now would race with the blocked wait; let the
		// waiter drop the lock itself if it ever gets it, so that a
		// long-lived caller cannot end up holding it unknowingly.
		go func() {
			<-done
			f.Close()
		}()
		return nil, fmt.Errorf("locking %s: still held by another process after %s", s.dir, timeout)
	}
}

func recordName(att ipam.Attachment) string {
	sum := sha256.Sum256([]byte(att.ContainerID + "\x00" + att.IfName))
	return hex.EncodeToString(sum[:20])
}

func cursorName(subnet netip.Prefix) string {
	return strings.NewReplacer("/", "_", ":", "-").Replace(subnet.String())
}

// writeTemp writes data to a fresh file in tmp/ and returns its path.
func (s *Store) writeTemp(data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "w-")
	if err != nil {
		return "", err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// replace atomically sets path's content.
func (s *Store) replace(path string, data []byte) error {
	tmp, err := s.writeTemp(data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Record implements ipam.Store.
func (s *Store) Record(att ipam.Attachment) (ipam.Record, bool, error) {
	data, err := readEntry(filepath.Join(s.dir, recordsDir, recordName(att)))
	if errors.Is(err, fs.ErrNotExist) {
		return ipam.Record{}, false, nil
	}
	if errors.Is(err, errNotRegular) {
		return ipam.Record{}, false, ipam.ErrUnreadable
	}
	if err != nil {
		return ipam.Record{}, false, err
	}
	rec, err := decodeRecord(data)
	if err != nil || rec.Attachment != att {
		s.log.Warn("ignoring unreadable allocation record", "file", filepath.Join(s.dir, recordsDir, recordName(att)), "error", err)
		return ipam.Record{}, false, ipam.ErrUnreadable
	}
	return rec, true, nil
}

func decodeRecord(data []byte) (ipam.Record, error) {
	var rec ipam.Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, err
	}
	if rec.ContainerID == "" || rec.IfName == "" {
		return rec, errors.New("record names no attachment")
	}
	for _, a := range rec.Allocations {
		if !a.Address.IsValid() {
			return rec, errors.New("record holds an invalid address")
		}
	}
	return rec, nil
}

// PutRecord implements ipam.Store.
func (s *Store) PutRecord(rec ipam.Record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, recordsDir, recordName(rec.Attachment))
	err = os.Symlink(string(data), path)
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Replacing: a new entry beside it, renamed over it.
	tmp := filepath.Join(s.dir, tmpDir, fmt.Sprintf("r-%d-%s", os.Getpid(), recordName(rec.Attachment)))
	_ = os.Remove(tmp)
	if err := os.Symlink(string(data), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// DeleteRecord implements ipam.Store.
func (s *Store) DeleteRecord(att ipam.Attachment) error {
	err := os.Remove(filepath.Join(s.dir, recordsDir, recordName(att)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Reserve implements ipam.Store: the reservation appears with its owner or
// not at all, and fails if the name exists. It is a hard link to att's
// record entry (the allocator always writes the record first), which names
// the owner: no inode to allocate, the costliest part of creating an entry.
// Sharing is safe because entries are never changed in place: a record is
// replaced by renaming a new entry over its name, which leaves the
// reservation on the old one, naming the same owner; and garbage written
// over one name replaces that name only.
func (s *Store) Reserve(ip netip.Addr, att ipam.Attachment) error {
	target := filepath.Join(s.dir, reservationsDir, ip.String())
	err := os.Link(filepath.Join(s.dir, recordsDir, recordName(att)), target)
	if errors.Is(err, fs.ErrNotExist) {
		// No record to share (not the allocator's order): an entry of its own.
		var data []byte
		if data, err = json.Marshal(att); err != nil {
			return err
		}
		err = os.Symlink(string(data), target)
	}
	if errors.Is(err, fs.ErrExist) {
		return ipam.ErrReserved
	}
	return err
}

// Owner implements ipam.Store.
func (s *Store) Owner(ip netip.Addr) (ipam.Attachment, ipam.OwnerState, error) {
	path := filepath.Join(s.dir, reservationsDir, ip.String())
	data, err := readEntry(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ipam.Attachment{}, ipam.Free, nil
	}
	if errors.Is(err, errNotRegular) {
		// Something that is not ours sits at the address's name (a
		// directory, a fifo): the name is taken, so the address is not
		// free, and it is no reason to fail every allocation.
		s.log.Warn("reservation is neither an entry nor a regular file; the address stays taken", "file", path)
		return ipam.Attachment{}, ipam.Unreadable, nil
	}
	if err != nil {
		return ipam.Attachment{}, ipam.Free, err
	}
	att, err := decodeOwner(data)
	if err != nil {
		s.log.Warn("reservation is unreadable; the address stays taken", "file", path, "error", err)
		return ipam.Attachment{}, ipam.Unreadable, nil
	}
	return att, ipam.Owned, nil
}

func decodeOwner(data []byte) (ipam.Attachment, error) {
	var att ipam.Attachment
	if err := json.Unmarshal(data, &att); err != nil {
		return att, err
	}
	if att.ContainerID == "" || att.IfName == "" {
		return att, errors.New("reservation names no attachment")
	}
	return att, nil
}

// Release implements ipam.Store.
func (s *Store) Release(ip netip.Addr) error {
	err := os.Remove(filepath.Join(s.dir, reservationsDir, ip.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Cursor implements ipam.Store.
func (s *Store) Cursor(subnet netip.Prefix) netip.Addr {
	data, err := os.ReadFile(filepath.Join(s.dir, cursorsDir, cursorName(subnet)))
	if err != nil {
		return netip.Addr{}
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil || !subnet.Contains(ip) {
		return netip.Addr{}
	}
	return ip
}

// SetCursor implements ipam.Store.
func (s *Store) SetCursor(subnet netip.Prefix, ip netip.Addr) error {
	// Overwritten in place, padded to a fixed width: it is a hint, a torn
	// or stale value only costs a longer search, and it spares an inode
	// allocation per ADD.
	f, err := os.OpenFile(filepath.Join(s.dir, cursorsDir, cursorName(subnet)), os.O_WRONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.WriteAt([]byte(fmt.Sprintf("%-46s\n", ip.String())), 0)
	return errors.Join(werr, f.Close())
}

// Scan implements ipam.Store. It only reads.
func (s *Store) Scan() (ipam.Scan, error) {
	var scan ipam.Scan
	resDir := filepath.Join(s.dir, reservationsDir)
	entries, err := os.ReadDir(resDir)
	if err != nil {
		return scan, err
	}
	for _, e := range entries {
		path := filepath.Join(resDir, e.Name())
		ip, err := netip.ParseAddr(e.Name())
		if err != nil || ip.String() != e.Name() {
			scan.Problems = append(scan.Problems, fmt.Sprintf("%s: not a reservation (name is not an address)", path))
			continue
		}
		owner, state, err := s.Owner(ip)
		if err != nil {
			return scan, err
		}
		if state == ipam.Free {
			continue // released meanwhile
		}
		if state == ipam.Unreadable {
			scan.Problems = append(scan.Problems, fmt.Sprintf("%s: unreadable reservation; the address stays taken until GC finds no valid owner", path))
		}
		scan.Reservations = append(scan.Reservations, ipam.Reservation{IP: ip, Owner: owner, State: state})
	}
	recDir := filepath.Join(s.dir, recordsDir)
	entries, err = os.ReadDir(recDir)
	if err != nil {
		return scan, err
	}
	for _, e := range entries {
		path := filepath.Join(recDir, e.Name())
		data, err := readEntry(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if errors.Is(err, errNotRegular) {
			scan.Problems = append(scan.Problems, fmt.Sprintf("%s: not an attachment record (neither an entry nor a regular file)", path))
			continue
		}
		if err != nil {
			return scan, err
		}
		rec, err := decodeRecord(data)
		if err != nil || recordName(rec.Attachment) != e.Name() {
			scan.Problems = append(scan.Problems, fmt.Sprintf("%s: unreadable attachment record", path))
			continue
		}
		scan.Records = append(scan.Records, rec)
	}
	for _, p := range scan.Problems {
		s.log.Warn("ignoring garbage in data dir", "problem", p)
	}
	return scan, nil
}

// RemoveStaleTemp deletes what killed writers left in tmp/. Call it with the
// lock held: then no live writer has a file there.
func (s *Store) RemoveStaleTemp() error {
	dir := filepath.Join(s.dir, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WriteSnapshot records the configuration in use, if it changed.
func (s *Store) WriteSnapshot(data []byte) error {
	path := filepath.Join(s.dir, SnapshotFile)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return nil
	}
	return s.replace(path, data)
}

// Snapshot returns the configuration last recorded by WriteSnapshot.
func (s *Store) Snapshot() ([]byte, error) {
	return os.ReadFile(filepath.Join(s.dir, SnapshotFile))
}

// Probe checks that the directory is writable, for STATUS.
func (s *Store) Probe() error {
	tmp, err := s.writeTemp([]byte("probe\n"))
	if err != nil {
		return err
	}
	// STATUS runs without the lock, so a GC's RemoveStaleTemp may have
	// removed the probe already: that is no failure of the directory.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

var errNotRegular = errors.New("not a regular file")

// readEntry returns an entry's content: a symbolic link's target, or a
// regular file's bytes.
func readEntry(path string) ([]byte, error) {
	target, err := os.Readlink(path)
	if err == nil {
		return []byte(target), nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return nil, err // fs.ErrNotExist included
	}
	return readRegular(path)
}

// readRegular reads a file that must be a regular file. It neither follows
// links nor blocks on a fifo someone left in the data dir.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, errNotRegular
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errNotRegular
	}
	return io.ReadAll(f)
}
