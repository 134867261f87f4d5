package filestore

import (
	"os"
	"path/filepath"
)

// IsNetworkDir reports whether dir looks like one network's directory (as
// opposed to a dataDir holding one per network), without creating anything.
// Both subdirectories are required so that a dataDir holding a network that
// happens to be named "ips" is not mistaken for a network directory.
func IsNetworkDir(dir string) bool {
	for _, sub := range []string{reservationsDir, recordsDir} {
		fi, err := os.Stat(filepath.Join(dir, sub))
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}
