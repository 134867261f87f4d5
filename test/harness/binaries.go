package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
)

// BinDir returns the directory holding podwall's binaries: $PODWALL_BIN_DIR,
// else bin/ at the root of the module containing the working directory.
func BinDir() (string, error) {
	if dir := os.Getenv("PODWALL_BIN_DIR"); dir != "" {
		return filepath.Abs(dir)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("locating bin dir: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("locating bin dir: no go.mod above the working directory and PODWALL_BIN_DIR unset")
		}
		dir = parent
	}
}

// CNIPath returns where plugins are looked up: our binaries in BinDir, then
// the reference plugins in BinDir/cni.
func CNIPath() ([]string, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	return []string{bin, filepath.Join(bin, "cni")}, nil
}

// PluginPath returns the path of a plugin binary, failing the test (with the
// command that builds it) when it is missing.
func PluginPath(t testing.TB, plugin string) string {
	t.Helper()
	paths, err := CNIPath()
	if err != nil {
		t.Fatal(err)
	}
	path, err := invoke.FindInPath(plugin, paths)
	if err != nil {
		t.Fatalf("plugin %q not found in %v: run make build", plugin, paths)
	}
	return path
}

// RequirePlugins fails the test unless every named plugin is in the CNI path.
func RequirePlugins(t testing.TB, plugins ...string) {
	t.Helper()
	for _, p := range plugins {
		PluginPath(t, p)
	}
}
