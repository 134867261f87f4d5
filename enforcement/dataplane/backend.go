package dataplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// backend is the xtables flavour the host uses: "nft" or "legacy".
type backend string

const (
	backendNFT    backend = "nft"
	backendLegacy backend = "legacy"
)

func (b backend) other() backend {
	if b == backendNFT {
		return backendLegacy
	}
	return backendNFT
}

// tool names the binary of a family for this backend, e.g.
// tool(IPv6, "save") = "ip6tables-nft-save".
func (b backend) tool(f ruleset.Family, suffix string) string {
	base := "iptables"
	if f == ruleset.IPv6 {
		base = "ip6tables"
	}
	name := base + "-" + string(b)
	if suffix != "" {
		name += "-" + suffix
	}
	return name
}

// detectBackend asks `iptables -V` which backend the host's iptables uses.
func detectBackend(ctx context.Context, r Runner) (backend, error) {
	out, err := runWith(ctx, r, nil, "iptables", "-V")
	if err != nil {
		return "", fmt.Errorf("detecting the iptables backend: %w", err)
	}
	switch v := string(out); {
	case strings.Contains(v, "(nf_tables)"):
		return backendNFT, nil
	case strings.Contains(v, "(legacy)"):
		return backendLegacy, nil
	default:
		return "", fmt.Errorf("detecting the iptables backend: unrecognised %q", strings.TrimSpace(v))
	}
}

// BackendFile, in Config.StateDir, remembers which backend the iptables
// binary is, so that a plugin invocation need not run `iptables -V`. It
// names the binary that iptables resolves to (through the alternatives
// symlinks) with its inode, size and modification time: switching the
// alternative, or replacing the binary, makes it run `iptables -V` again.
const BackendFile = "iptables.backend"

// cachedBackend detects the backend, or takes it from the cache file when
// that describes the same iptables binary.
func cachedBackend(ctx context.Context, r Runner, stateDir string) (backend, error) {
	id, idErr := iptablesIdentity()
	path := filepath.Join(stateDir, BackendFile)
	if idErr == nil {
		if data, err := os.ReadFile(path); err == nil {
			if cachedID, b, ok := strings.Cut(strings.TrimSpace(string(data)), " backend="); ok && cachedID == id &&
				(backend(b) == backendNFT || backend(b) == backendLegacy) {
				return backend(b), nil
			}
		}
	}
	b, err := detectBackend(ctx, r)
	if err != nil || idErr != nil {
		return b, err
	}
	// Best effort: without the cache every invocation detects again.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(id+" backend="+string(b)+"\n"), 0o600); err == nil {
		if err := os.Rename(tmp, path); err != nil {
			_ = os.Remove(tmp)
		}
	}
	return b, nil
}

// iptablesIdentity names the binary that `iptables` runs.
func iptablesIdentity() (string, error) {
	p, err := lookPath("iptables")
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("no inode for %s", real)
	}
	return fmt.Sprintf("iptables=%s->%s dev=%d ino=%d size=%d mtime=%d", p, real, st.Dev, st.Ino, fi.Size(), fi.ModTime().UnixNano()), nil
}

// checkNotMixed refuses a host where the backend we do not use also holds
// filter rules: packets would be judged by both and our verdicts would not
// be the final ones.
func checkNotMixed(ctx context.Context, r Runner, b backend) error {
	for _, f := range ruleset.Families() {
		name := b.other().tool(f, "save")
		if b.other() == backendLegacy && !legacyFilterExists(f) {
			// Asking iptables-legacy-save would instantiate an empty legacy
			// filter table (and its hooks) in this namespace.
			continue
		}
		out, err := runWith(ctx, r, nil, name, "-t", "filter")
		if err != nil {
			// Not installed, no table, or no kernel support for it:
			// nothing there.
			continue
		}
		if t := parseSave(string(out)); t.hasNonDefault() {
			return fmt.Errorf("mixed iptables backends: %s uses %s but %s has %s filter rules; refusing to enforce half the truth",
				"iptables", b, name, f)
		}
	}
	return nil
}

// legacyFilterExists reads the legacy tables of the calling thread's
// namespace (/proc/self/net would show the main thread's).
func legacyFilterExists(f ruleset.Family) bool {
	path := "/proc/thread-self/net/ip_tables_names"
	if f == ruleset.IPv6 {
		path = "/proc/thread-self/net/ip6_tables_names"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false // module not loaded: no legacy table anywhere
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "filter" {
			return true
		}
	}
	return false
}
