package k8senv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths outside the node's directory that containerd 1.6 and the kubelet
// use whatever they are told. Each is removed at teardown when the node
// created it.
const (
	shimSocketDir     = "/run/containerd/s"                   // runc shims' sockets
	cniResultCacheDir = "/var/lib/cni"                        // libcni's result cache, as containerd runs it
	devicePluginsDir  = "/var/lib/kubelet/device-plugins"     // the kubelet's device plugin socket
	containerLogLinks = "/var/log/containers"                 // the kubelet's links to container logs
	cgroupV1Root      = "/sys/fs/cgroup"                      // one hierarchy per controller
	podNetNSSubdir    = "netns"                               // under containerd's state dir
	criSandboxesDir   = "io.containerd.grpc.v1.cri/sandboxes" // under containerd's root dir
)

// hostPaths records which of those paths existed before a node started.
type hostPaths struct {
	existed     map[string]bool
	shimSockets []string // entries of shimSocketDir before containerd started
}

func snapshotHostPaths() (*hostPaths, error) {
	h := &hostPaths{existed: map[string]bool{}}
	for _, path := range []string{"/run/containerd", shimSocketDir, cniResultCacheDir, "/var/lib/kubelet", devicePluginsDir, containerLogLinks} {
		_, err := os.Lstat(path)
		h.existed[path] = err == nil
	}
	entries, err := os.ReadDir(shimSocketDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listing %s: %w", shimSocketDir, err)
	}
	for _, e := range entries {
		h.shimSockets = append(h.shimSockets, e.Name())
	}
	return h, nil
}

// restore removes what the node left in those paths: shim sockets no
// process listens on any more that were not there before, the result cache
// entries of its sandboxes, links to its logs, and directories it created,
// once empty.
func (h *hostPaths) restore(sandboxIDs []string, nodeDir string) error {
	var errs []error
	entries, _ := os.ReadDir(shimSocketDir)
	for _, e := range entries {
		path := filepath.Join(shimSocketDir, e.Name())
		if slices.Contains(h.shimSockets, e.Name()) || socketListening(path) {
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	results, _ := filepath.Glob(filepath.Join(cniResultCacheDir, "results", "*"))
	for _, path := range results {
		for _, id := range sandboxIDs {
			if strings.Contains(filepath.Base(path), "-"+id+"-") {
				if err := os.Remove(path); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	links, _ := os.ReadDir(containerLogLinks)
	for _, e := range links {
		path := filepath.Join(containerLogLinks, e.Name())
		if target, err := os.Readlink(path); err == nil && strings.HasPrefix(target, nodeDir+"/") {
			if err := os.Remove(path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if sock := filepath.Join(devicePluginsDir, "kubelet.sock"); !h.existed[devicePluginsDir] && !socketListening(sock) {
		_ = os.Remove(sock)
	}
	// Deepest first, and only what we created. A directory still holding
	// files holds another node's (tests run in parallel): it stays.
	for _, dir := range []string{shimSocketDir, "/run/containerd", filepath.Join(cniResultCacheDir, "results"), cniResultCacheDir, devicePluginsDir, "/var/lib/kubelet", containerLogLinks} {
		if h.existed[dir] || (dir == filepath.Join(cniResultCacheDir, "results") && h.existed[cniResultCacheDir]) {
			continue
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("removing %s, created by the node: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

func socketListening(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// cgroupHierarchies lists the mounted cgroup hierarchies: v1's, one per
// controller (cpu and cpuacct may be one reached through two links: links
// are skipped), and the hybrid layout's "unified" v2 tree, which the
// kubelet mirrors its cgroups into.
func cgroupHierarchies() ([]string, error) {
	entries, err := os.ReadDir(cgroupV1Root)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", cgroupV1Root, err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && e.Type()&os.ModeSymlink == 0 {
			dirs = append(dirs, filepath.Join(cgroupV1Root, e.Name()))
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no cgroup v1 hierarchy under %s", cgroupV1Root)
	}
	return dirs, nil
}

// createCgroupRoot creates /<name> in every hierarchy: the kubelet insists
// that its cgroupRoot exists, and everything the pods run in then lives
// below it, where teardown finds it.
func createCgroupRoot(name string) error {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hierarchies {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// cgroupProcesses lists the processes in the cgroup tree /<name> of any
// hierarchy.
func cgroupProcesses(name string) []int {
	hierarchies, _ := cgroupHierarchies()
	var pids []int
	for _, h := range hierarchies {
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(path)
			for _, field := range strings.Fields(string(data)) {
				var pid int
				if _, err := fmt.Sscan(field, &pid); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoot removes the tree /<name> from every hierarchy, deepest
// first. It fails while a process still runs in it.
func removeCgroupRoot(name string) error {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hierarchies {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount point below dir, deepest first: the
// containers' root filesystems, their shm, the pods' namespace files.
func unmountUnder(dir string) error {
	var errs []error
	for range 3 { // a mount may hide another one below it
		points, err := mountPointsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		errs = nil
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

func mountPointsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountPath(fields[4])
		if strings.HasPrefix(point, dir+"/") {
			points = append(points, point)
		}
	}
	// Longer paths are deeper.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	return points, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
