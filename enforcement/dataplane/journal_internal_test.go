package dataplane

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

func TestJournalRecordsAndAccounts(t *testing.T) {
	d := &Dataplane{stateDir: t.TempDir(), log: slog.New(slog.DiscardHandler)}
	if err := d.journaled(opEnsure, "AAAA", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	j, err := d.readJournal()
	if err != nil || j.epoch == "" || j.last() != 2 {
		t.Fatalf("journal %+v, %v", j, err)
	}
	epoch, seq := j.epoch, j.last()
	if err := d.journaled(opRemove, "AAAA", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := d.journaled(opEnsure, "BBBB", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	j, _ = d.readJournal()
	entries, ok := j.since(epoch, seq)
	if !ok || len(entries) != 4 {
		t.Fatalf("since: %+v, %v", entries, ok)
	}
	in, out := policyChains("AAAA")
	st := &kernelState{chains: map[ruleset.Family]map[string]chainState{
		ruleset.IPv4: {fromPodChain("AAAA"): {}, in: {n: 3, fp: "fp"}, out: {n: 1, denyTail: true}},
		ruleset.IPv6: {},
	}}
	if !st.replay(entries) {
		t.Fatal("replay refused a complete journal")
	}
	if _, ok := st.chains[ruleset.IPv4][in]; ok {
		t.Error("removed pod's chain still remembered")
	}
	bIn, _ := policyChains("BBBB")
	for _, f := range ruleset.Families() {
		if c, ok := st.chains[f][bIn]; !ok || !c.onlyDefaultDeny() {
			t.Errorf("%s: ensured pod's policy chain %+v, %v", f, c, ok)
		}
		if _, ok := st.chains[f][fromPodChain("BBBB")]; !ok {
			t.Errorf("%s: ensured pod's static chain not remembered", f)
		}
	}

	// A writer that died between begin and done, another epoch, or an
	// entry the journal no longer holds: the kernel must be read again.
	if err := d.record(opEnsure, "CCCC", false); err != nil {
		t.Fatal(err)
	}
	j, _ = d.readJournal()
	entries, ok = j.since(epoch, seq)
	if !ok || st.replay(entries) {
		t.Error("replay accepted a change begun and not done")
	}
	if _, ok := j.since("other", seq); ok {
		t.Error("since accepted another epoch")
	}
	if _, ok := j.since(epoch, 1000); ok {
		t.Error("since accepted a sequence it does not hold")
	}
	// Entries are appended up to twice journalKeep, then trimmed.
	for range 2 * journalKeep {
		if err := d.record(opProbe, "-", true); err != nil {
			t.Fatal(err)
		}
	}
	j, _ = d.readJournal()
	if _, ok := j.since(epoch, seq); ok || len(j.entries) < journalKeep || len(j.entries) >= 2*journalKeep {
		t.Errorf("journal of %d entries still accounts for a trimmed one", len(j.entries))
	}
	// A torn last line (a writer that died mid-append) is garbage too.
	raw, err := os.ReadFile(filepath.Join(d.stateDir, JournalFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseJournal(string(raw[:len(raw)-3])); err == nil {
		t.Error("a journal with a torn last line was accepted")
	}

	// A garbled journal is started anew under another epoch.
	if err := os.WriteFile(filepath.Join(d.stateDir, JournalFile), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.record(opProbe, "-", true); err != nil {
		t.Fatal(err)
	}
	if j, err := d.readJournal(); err != nil || j.epoch == epoch || j.last() != 1 {
		t.Errorf("restarted journal %+v, %v", j, err)
	}
}
