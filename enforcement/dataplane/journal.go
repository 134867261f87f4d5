package dataplane

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// JournalFile, in Config.StateDir next to the lock, lists the recent
// changes that plugin invocations made to podwall's chains. The agent keeps
// what it last read or wrote of the kernel in memory; reading the journal
// (a small file) tells it whether anyone else wrote since, and what, so
// that an Apply need not read whole tables back. It is written only under
// the state lock, appended to (or replaced atomically), and records each change
// before it is made and again once it is done: a writer that died in
// between leaves a change that is begun and not done, which makes the
// agent read the kernel again. Anything it cannot account for has the same
// effect.
const JournalFile = "iptables.journal"

// journalKeep is how many entries the journal holds; an agent that
// missed more reads the kernel again.
const journalKeep = 256

// Journal operations.
const (
	opEnsure = "ensure" // EnsurePod: the key's four chains and dispatch
	opRemove = "remove" // RemovePod: the key's chains and dispatch gone
	opProbe  = "probe"  // Probe: a throwaway chain and set, removed again
)

// journal is the file's content: an epoch that changes whenever the file
// is created anew (so sequence numbers of a lost file are never mistaken
// for new ones) and the last entries, oldest first.
type journal struct {
	epoch   string
	entries []journalEntry
}

type journalEntry struct {
	seq  uint64
	op   string // opEnsure, opRemove, opProbe
	key  string
	done bool // false: begun, not (yet) done
}

// last is the sequence number of the newest entry, 0 if none.
func (j *journal) last() uint64 {
	if len(j.entries) == 0 {
		return 0
	}
	return j.entries[len(j.entries)-1].seq
}

func (d *Dataplane) journalPath() string { return filepath.Join(d.stateDir, JournalFile) }

// readJournal reads the journal; a missing one is empty with no epoch.
func (d *Dataplane) readJournal() (*journal, error) {
	data, err := os.ReadFile(d.journalPath())
	if errors.Is(err, os.ErrNotExist) {
		return &journal{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", d.journalPath(), err)
	}
	return parseJournal(string(data))
}

func parseJournal(s string) (*journal, error) {
	if !strings.HasSuffix(s, "\n") {
		return nil, errors.New("journal: last line torn (no newline)")
	}
	j := &journal{}
	for i, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		f := strings.Fields(line)
		if i == 0 {
			if len(f) != 2 || f[0] != "epoch" {
				return nil, fmt.Errorf("journal: bad first line %q", line)
			}
			j.epoch = f[1]
			continue
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("journal: bad line %q", line)
		}
		seq, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || seq <= j.last() {
			return nil, fmt.Errorf("journal: bad sequence in %q", line)
		}
		e := journalEntry{seq: seq}
		switch {
		case f[1] == "done" && len(f) == 4:
			e.done, e.op, e.key = true, f[2], f[3]
		case f[1] == "begin" && len(f) == 4:
			e.op, e.key = f[2], f[3]
		default:
			return nil, fmt.Errorf("journal: bad line %q", line)
		}
		j.entries = append(j.entries, e)
	}
	return j, nil
}

// record appends an entry, holding the state lock. A journal that cannot
// be read is started anew with a new epoch, which every agent's memory
// disowns. Entries are appended in place (a line is one small write, and
// a torn last line makes the journal unreadable, hence new); the file is
// rewritten only to start it or to drop old entries.
func (d *Dataplane) record(op, key string, done bool) error {
	j, err := d.readJournal()
	if err != nil || j.epoch == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("journal epoch: %w", err)
		}
		j = &journal{epoch: hex.EncodeToString(b[:])}
	}
	e := journalEntry{seq: j.last() + 1, op: op, key: key, done: done}
	if len(j.entries) > 0 && len(j.entries) < 2*journalKeep {
		return d.appendJournal(e)
	}
	j.entries = append(j.entries, e)
	if len(j.entries) > journalKeep {
		j.entries = j.entries[len(j.entries)-journalKeep:]
	}
	return d.writeJournal(j)
}

func (e journalEntry) line() string {
	state := "begin"
	if e.done {
		state = "done"
	}
	return fmt.Sprintf("%d %s %s %s\n", e.seq, state, e.op, e.key)
}

func (d *Dataplane) appendJournal(e journalEntry) error {
	f, err := os.OpenFile(d.journalPath(), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("appending to journal: %w", err)
	}
	_, werr := f.WriteString(e.line())
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return fmt.Errorf("appending to journal: %w", werr)
	}
	return nil
}

func (d *Dataplane) writeJournal(j *journal) error {
	var b strings.Builder
	fmt.Fprintf(&b, "epoch %s\n", j.epoch)
	for _, e := range j.entries {
		b.WriteString(e.line())
	}
	tmp := d.journalPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("writing journal: %w", err)
	}
	if err := os.Rename(tmp, d.journalPath()); err != nil {
		return fmt.Errorf("writing journal: %w", err)
	}
	return nil
}

// journaled runs fn, which changes the kernel, between a begin and a done
// entry for op and key. Call it holding the state lock.
func (d *Dataplane) journaled(op, key string, fn func() error) error {
	if err := d.record(op, key, false); err != nil {
		return err
	}
	if err := fn(); err != nil {
		return err // begun, never done: agents read the kernel again
	}
	return d.record(op, key, true)
}

// since returns the entries after seq when the journal is of epoch and
// still holds seq (or seq is its newest entry); ok is false when the
// journal cannot account for everything that happened since.
func (j *journal) since(epoch string, seq uint64) (entries []journalEntry, ok bool) {
	if j.epoch != epoch || epoch == "" {
		return nil, false
	}
	if seq == j.last() {
		return nil, true
	}
	for i, e := range j.entries {
		if e.seq == seq {
			return j.entries[i+1:], true
		}
	}
	return nil, false
}
