package k8senv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	// nodeDirPrefix starts the name of every kubelet node's directory in
	// the temp dir; the cgroup root and containerd socket are named after
	// it.
	nodeDirPrefix = "pwk8s-"
	// ownerFile in a node's directory holds the test process's pid, so
	// that a later run can clean up after a test binary that was killed.
	ownerFile = "owner.pid"
)

// newNodeDir creates a node's directory and records this process as its
// owner.
func newNodeDir() (string, error) {
	dir, err := os.MkdirTemp("", nodeDirPrefix)
	if err != nil {
		return "", fmt.Errorf("creating node dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return "", errors.Join(fmt.Errorf("recording the node dir's owner: %w", err), os.RemoveAll(dir))
	}
	return dir, nil
}

// sweepStaleNodes removes what kubelet nodes of dead test processes left
// (a go test timeout kills the binary before its cleanups): containerd and
// the kubelet died with it (Pdeathsig), but the pods' processes and shims,
// the mounts, the cgroups and the directory remain.
func sweepStaleNodes() error {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), nodeDirPrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			continue // its owner still runs
		}
		n := &KubeletNode{
			Dir:              dir,
			containerdRoot:   filepath.Join(dir, "containerd", "root"),
			containerdSocket: filepath.Join(dir, "containerd.sock"),
			cgroupRoot:       filepath.Base(dir),
		}
		n.killLeftovers()
		errs = append(errs, unmountUnder(dir), removeCgroupRoot(n.cgroupRoot))
		// Which of the runtime's host paths the node created is unknown
		// now: keep them all, but drop its entries (dead shim sockets,
		// result cache, log links), then the runtime dirs if empty.
		kept := &hostPaths{existed: map[string]bool{}}
		for _, path := range []string{"/run/containerd", shimSocketDir, cniResultCacheDir, "/var/lib/kubelet", devicePluginsDir, containerLogLinks} {
			kept.existed[path] = true
		}
		errs = append(errs, kept.restore(n.sandboxIDs(), dir))
		_ = os.Remove(shimSocketDir)
		_ = os.Remove("/run/containerd")
		if points, err := mountPointsUnder(dir); err == nil && len(points) == 0 {
			errs = append(errs, os.RemoveAll(dir))
		}
	}
	return errors.Join(errs...)
}
