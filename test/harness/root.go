package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireRoot stops the test unless it can build namespaces: it must run as
// root with the ip and iptables commands. With CI=true the test fails instead
// of skipping, so a misconfigured CI machine cannot pass by skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, cmd := range []string{"ip", "iptables"} {
		if _, err := lookCommand(cmd); err != nil {
			missing = append(missing, "the "+cmd+" command")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, " and ") + " (run as root after make deps)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; failing rather than skipping because CI=true")
	}
	t.Skip(msg)
}

// lookCommand finds a system command, also in the sbin directories that a
// non-login PATH often lacks.
func lookCommand(name string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		path := filepath.Join(dir, name)
		if info, err := os.Stat(path); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH or sbin directories", name)
}

// runHost runs a command in the calling thread's (the host's) namespaces.
func runHost(path string, args ...string) (string, error) {
	var stderr strings.Builder
	cmd := exec.Command(path, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
