package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/podwall/podwall/enforcement/changes"
)

// DefaultDebounce is how long Dir waits for a burst of file events to end
// before it reads the directory.
const DefaultDebounce = 20 * time.Millisecond

// DefaultPoll is how often Dir reads the directory even without events: a
// safety net for events inotify does not deliver (the directory itself
// replaced, network filesystems).
const DefaultPoll = time.Minute

// Dir is a Source reading a directory of manifests: files named *.yaml,
// *.yml or *.json directly in it (not in subdirectories), each holding one
// or more Namespace, Pod, NetworkPolicy or List documents. Names starting
// with a dot are ignored, which skips editors' temporary files and the
// hidden directories of a mounted ConfigMap (whose visible files are
// symlinks, which are followed).
type Dir struct {
	path     string
	debounce time.Duration
	poll     time.Duration
	log      *slog.Logger
	changes  chan struct{}

	// readMu serialises reads, so that a Resync returns only after a read
	// that started after it was called.
	readMu sync.Mutex

	// decoded holds what each file decoded to at the last read, by name:
	// a file whose bytes are unchanged is not decoded again; origins, where
	// each object of the snapshot comes from. Only read (under readMu)
	// touches them.
	decoded map[string]cachedFile
	origins map[objectID]origin

	mu      sync.Mutex
	objs    Objects
	readErr error
	digest  [sha256.Size]byte
	// changed is what changed since the last Snapshot; unknown until the
	// first one, and after a failed read.
	changed changes.Set
}

// cachedFile is one file's decoded documents and the hash of the bytes
// they were decoded from.
type cachedFile struct {
	sum   [sha256.Size]byte
	items []decoded
}

// DirOption configures a Dir.
type DirOption func(*Dir)

// WithDebounce sets how long a burst of file events may last.
func WithDebounce(d time.Duration) DirOption { return func(s *Dir) { s.debounce = d } }

// WithPoll sets how often the directory is read without any event.
func WithPoll(d time.Duration) DirOption { return func(s *Dir) { s.poll = d } }

// NewDir reads the directory once; it fails if the directory cannot be
// read at all.
func NewDir(path string, log *slog.Logger, opts ...DirOption) (*Dir, error) {
	d := &Dir{path: path, debounce: DefaultDebounce, poll: DefaultPoll, log: log, changes: make(chan struct{}, 1)}
	for _, o := range opts {
		o(d)
	}
	if err := d.read(); err != nil {
		return nil, err
	}
	return d, nil
}

// Path is the directory read.
func (d *Dir) Path() string { return d.path }

// Changes implements Source.
func (d *Dir) Changes() <-chan struct{} { return d.changes }

// Snapshot implements Source.
func (d *Dir) Snapshot() (Objects, changes.Set, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := d.changed
	d.changed = changes.None()
	return d.objs, ch, d.readErr
}

// Resync implements Source: it reads the directory now.
func (d *Dir) Resync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.read()
}

// Run implements Source: it watches the directory with inotify, and polls
// it. When the directory is missing or replaced, the watch is set up again
// at the next poll; meanwhile the last good contents stay enforced.
func (d *Dir) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", d.path, err)
	}
	defer w.Close()
	watching := false
	watch := func() {
		if err := w.Add(d.path); err != nil {
			d.log.Warn("cannot watch the policy dir; polling it", "dir", d.path, "every", d.poll, "err", err)
			return
		}
		watching = true
		// A change between the last read and the watch would be missed.
		if err := d.read(); err != nil {
			d.log.Error("reading policy dir", "dir", d.path, "err", err)
		}
	}
	watch()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	poll := time.NewTicker(d.poll)
	defer poll.Stop()
	self := filepath.Clean(d.path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
			if !watching {
				watch()
			}
			timer.Reset(0)
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("policy dir watcher closed")
			}
			if filepath.Clean(ev.Name) == self && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				d.log.Warn("policy dir removed or replaced; enforcing its last contents until it is back", "dir", d.path)
				_ = w.Remove(d.path)
				watching = false
			}
			timer.Reset(d.debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("policy dir watcher closed")
			}
			// An overflow loses events: read everything again.
			d.log.Warn("policy dir watch", "dir", d.path, "err", err)
			timer.Reset(d.debounce)
		case <-timer.C:
			if err := d.read(); err != nil {
				d.log.Error("reading policy dir", "dir", d.path, "err", err)
			}
		}
	}
}

// read reads every manifest, replaces the snapshot when anything changed
// and signals Changes. Every file is read and hashed each time, but only
// the files whose bytes changed are decoded again, and the objects are
// merged (in file order, as if everything had been decoded anew) only when
// some file changed.
func (d *Dir) read() error {
	d.readMu.Lock()
	defer d.readMu.Unlock()

	files, err := d.manifestFiles()
	if err != nil {
		d.setError(err)
		return err
	}
	// parts are the files in order; an unreadable one is a problem alone.
	type part struct {
		name       string
		items      []decoded
		unreadable *Problem
	}
	var stale []staleFile
	parts := make([]part, 0, len(files))
	cache := make(map[string]cachedFile, len(files))
	h := sha256.New()
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(d.path, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed since listed
		}
		fmt.Fprintf(h, "%d:%s;%d:", len(name), name, len(data))
		if err != nil {
			fmt.Fprintf(h, "error %v;", err)
			parts = append(parts, part{unreadable: &Problem{File: name, Err: fmt.Errorf("unreadable, skipped: %w", err)}})
			continue
		}
		sum := sha256.Sum256(data)
		h.Write(sum[:])
		if cf, ok := d.decoded[name]; ok && cf.sum == sum {
			cache[name] = cf
		} else {
			stale = append(stale, staleFile{name: name, data: data, sum: sum})
		}
		parts = append(parts, part{name: name})
	}
	// Decoding is most of a first read (an agent's start): files are
	// decoded side by side, one per core.
	decodeAll(stale)
	for _, f := range stale {
		cache[f.name] = cachedFile{sum: f.sum, items: f.items}
	}
	for i := range parts {
		if parts[i].unreadable == nil {
			parts[i].items = cache[parts[i].name].items
		}
	}
	decodedBefore := d.decoded
	d.decoded = cache
	var digest [sha256.Size]byte
	copy(digest[:], h.Sum(nil))

	d.mu.Lock()
	hadError := d.readErr != nil
	changed := !bytes.Equal(digest[:], d.digest[:])
	d.mu.Unlock()
	var objs Objects
	var origins map[objectID]origin
	if changed {
		m := newMerger(countObjects(cache))
		for _, p := range parts {
			if p.unreadable != nil {
				m.problem(*p.unreadable)
			}
			m.add(p.name, cache[p.name].sum, p.items)
		}
		objs, origins = m.objs, m.origins
	}

	d.mu.Lock()
	d.readErr = nil
	if hadError {
		// Nothing changed while the read failed, as far as is known; but
		// that is not far enough.
		d.changed.MarkUnknown()
	}
	if changed {
		recordChanges(d.origins, origins, decodedBefore, cache, &d.changed)
		d.objs, d.digest, d.origins = objs, digest, origins
	}
	problems := d.objs.Problems
	d.mu.Unlock()
	if changed || hadError {
		for _, p := range problems {
			d.log.Warn("invalid manifest", "dir", d.path, "problem", p.Error())
		}
		d.notify()
	}
	return nil
}

// staleFile is a file whose decoded documents are not in the cache.
type staleFile struct {
	name  string
	data  []byte
	sum   [sha256.Size]byte
	items []decoded
}

func decodeAll(files []staleFile) {
	work := make(chan *staleFile)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(files)) {
		wg.Go(func() {
			for f := range work {
				f.items = decodeFile(f.name, f.data)
			}
		})
	}
	for i := range files {
		work <- &files[i]
	}
	close(work)
	wg.Wait()
}

func (d *Dir) setError(err error) {
	d.mu.Lock()
	d.readErr = err
	d.mu.Unlock()
	d.notify()
}

func (d *Dir) notify() {
	select {
	case d.changes <- struct{}{}:
	default:
	}
}

func (d *Dir) manifestFiles() ([]string, error) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("reading policy dir: %w", err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !isManifest(name) {
			continue
		}
		if e.Type()&os.ModeSymlink != 0 {
			if st, err := os.Stat(filepath.Join(d.path, name)); err != nil || st.IsDir() {
				continue
			}
		} else if !e.Type().IsRegular() {
			continue
		}
		files = append(files, name)
	}
	slices.Sort(files)
	return files, nil
}

func isManifest(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}
