package dataplane

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The backend is remembered for the iptables binary it was detected for,
// and detected again when the file describes another binary.
func TestCachedBackend(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	want, err := detectBackend(ctx, execRunner{})
	if err != nil {
		t.Fatal(err) // iptables is a dependency (make deps)
	}
	got, err := cachedBackend(ctx, execRunner{}, dir)
	if err != nil || got != want {
		t.Fatalf("first: %q, %v; want %q", got, err, want)
	}
	path := filepath.Join(dir, BackendFile)
	data, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(data), "backend="+string(want)) {
		t.Fatalf("cache file %q, %v", data, err)
	}
	// A cache naming the other backend for this very binary is believed
	// (which shows it is read) ...
	id, err := iptablesIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(id+" backend="+string(want.other())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := cachedBackend(ctx, execRunner{}, dir); got != want.other() {
		t.Errorf("cache not used: %q", got)
	}
	// ... and one for another binary, or garbage, is not.
	for _, content := range []string{"iptables=/elsewhere dev=1 ino=2 size=3 mtime=4 backend=" + string(want.other()), "garbage"} {
		if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := cachedBackend(ctx, execRunner{}, dir); err != nil || got != want {
			t.Errorf("with %q: %q, %v; want %q", content, got, err, want)
		}
	}
}
