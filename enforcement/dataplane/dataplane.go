package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// LockFile is the name of the lock every writer of podwall's iptables
// state holds, in Config.StateDir.
const LockFile = "iptables.lock"

// Dataplane programs podwall's chains and sets in the network namespace of
// the thread that calls it. Every read-modify-write holds the state lock,
// so the agent and the plugin's fallback never interleave.
type Dataplane struct {
	log         *slog.Logger
	lockPath    string
	runner      Runner
	backend     backend
	flows       flowTable
	maxStateAge time.Duration

	// stateMu guards state, Apply's memory of the kernel (nil: read it).
	stateMu sync.Mutex
	state   *kernelState
}

// New detects the iptables backend and refuses a host where the other
// backend also holds filter rules.
func New(cfg Config, log *slog.Logger) (*Dataplane, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("dataplane: no state directory")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := execRunner{}
	b, err := cachedBackend(ctx, r, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if err := checkNotMixed(ctx, r, b); err != nil {
		return nil, err
	}
	return newDataplane(cfg, log, r, b), nil
}

func newDataplane(cfg Config, log *slog.Logger, r Runner, b backend) *Dataplane {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxAge := cfg.MaxStateAge
	if maxAge <= 0 {
		maxAge = DefaultMaxStateAge
	}
	return &Dataplane{log: log, lockPath: filepath.Join(cfg.StateDir, LockFile), runner: r, backend: b,
		flows: netlinkFlows{}, maxStateAge: maxAge}
}

// locked runs fn holding the exclusive state lock, waiting for it as long
// as ctx allows.
func (d *Dataplane) locked(ctx context.Context, fn func() error) error {
	f, err := os.OpenFile(d.lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("opening lock: %w", err)
	}
	defer f.Close()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("locking %s: %w", d.lockPath, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", d.lockPath, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it anyway
	return fn()
}

// save reads the filter table of one family.
func (d *Dataplane) save(ctx context.Context, f ruleset.Family) (*table, error) {
	out, err := d.run(ctx, nil, d.backend.tool(f, "save"), "-t", "filter")
	if err != nil {
		return nil, fmt.Errorf("reading %s filter table: %w", f, err)
	}
	return parseSave(string(out)), nil
}

// startSaves starts reading the filter table of both families; the
// returned function waits for the tables. The processes are started on
// the calling thread, in its network namespace, so the caller may do
// other work in between.
func (d *Dataplane) startSaves(ctx context.Context) func() (map[ruleset.Family]*table, error) {
	procs := map[ruleset.Family]Process{}
	var errs []error
	for _, f := range ruleset.Families() {
		p, err := d.runner.Start(ctx, nil, d.backend.tool(f, "save"), "-t", "filter")
		if err != nil {
			errs = append(errs, fmt.Errorf("reading %s filter table: %w", f, err))
			continue
		}
		procs[f] = p
	}
	return func() (map[ruleset.Family]*table, error) {
		tables := map[ruleset.Family]*table{}
		for _, f := range ruleset.Families() {
			p := procs[f]
			if p == nil {
				continue
			}
			out, err := p.Wait()
			if err != nil {
				errs = append(errs, fmt.Errorf("reading %s filter table: %w", f, err))
				continue
			}
			tables[f] = parseSave(string(out))
		}
		return tables, errors.Join(errs...)
	}
}

// restore applies a script atomically, leaving every chain it does not
// declare as it is.
func (d *Dataplane) restore(ctx context.Context, f ruleset.Family, s *script) error {
	return d.restoreFamilies(ctx, map[ruleset.Family]*script{f: s})[f]
}

// restoreFamilies applies one script per family, the families side by
// side (their tables are independent), and returns each family's error.
func (d *Dataplane) restoreFamilies(ctx context.Context, scripts map[ruleset.Family]*script) map[ruleset.Family]error {
	errs := map[ruleset.Family]error{}
	procs := map[ruleset.Family]Process{}
	for _, f := range ruleset.Families() {
		s := scripts[f]
		if s == nil || s.empty() {
			continue
		}
		p, err := d.runner.Start(ctx, s.bytes(), d.backend.tool(f, "restore"), "-w", "--noflush")
		if err != nil {
			errs[f] = fmt.Errorf("writing %s rules: %w", f, err)
			continue
		}
		procs[f] = p
	}
	for _, f := range ruleset.Families() {
		if p := procs[f]; p != nil {
			if _, err := p.Wait(); err != nil {
				errs[f] = fmt.Errorf("writing %s rules: %w\n%s", f, err, scripts[f].bytes())
			}
		}
	}
	return errs
}

// firstError returns the error of the first family that has one.
func firstError(errs map[ruleset.Family]error) error {
	for _, f := range ruleset.Families() {
		if errs[f] != nil {
			return errs[f]
		}
	}
	return nil
}

// iptables runs the family's iptables command with the xtables lock.
func (d *Dataplane) iptables(ctx context.Context, f ruleset.Family, args ...string) error {
	_, err := d.run(ctx, nil, d.backend.tool(f, ""), append([]string{"-w"}, args...)...)
	return err
}
