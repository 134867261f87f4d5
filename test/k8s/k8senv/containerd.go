package k8senv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// containerdConfig is containerd 1.6's configuration for one test node:
// every directory is the node's own, and the CRI plugin runs the node's CNI
// directories.
const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %[3]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # the pods' namespace files go under the state dir, not /run/netns
  netns_mounts_under_state_dir = true
  # Processes here lack CAP_SYS_RESOURCE and cannot lower oom_score_adj:
  # without this, runc fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[6]q
        Root = %[7]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
    max_conf_num = 1
`

// startContainerd writes the node's containerd configuration, starts it in
// the node namespace, waits for its socket and imports the pause image.
func (n *KubeletNode) startContainerd(ctx context.Context) error {
	root := filepath.Join(n.Dir, "containerd", "root")
	for _, dir := range []string{root, n.containerdState, filepath.Join(n.Dir, "containerd", "opt")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	n.containerdRoot = root
	config := fmt.Sprintf(containerdConfig, root, n.containerdState, n.containerdSocket,
		filepath.Join(n.Dir, "containerd", "opt"), PauseImage, n.tools.Runc,
		filepath.Join(n.containerdState, "runc"), n.CNIBinDir, n.CNIConfDir)
	configPath := filepath.Join(n.Dir, "containerd", "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", configPath, err)
	}
	p, err := startProcess(n.Node.NetNS(), n.Dir, "containerd", n.tools.Containerd, "--config", configPath)
	if err != nil {
		return err
	}
	n.procs.add(p)
	n.containerd = p
	err = poll(ctx, "containerd", n.procs.firstExited, func() error {
		_, err := n.ctr(ctx, "version")
		return err
	})
	if err != nil {
		return err
	}
	if _, err := n.ctr(ctx, "--namespace", "k8s.io", "images", "import", n.tools.PauseImageTar); err != nil {
		return fmt.Errorf("importing the pause image: %w", err)
	}
	return nil
}

// ctr runs containerd's client against the node's containerd.
func (n *KubeletNode) ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.tools.Ctr, append([]string{"--address", n.containerdSocket}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// sandboxIDs lists the pod sandboxes containerd's CRI plugin has recorded.
func (n *KubeletNode) sandboxIDs() []string {
	entries, _ := os.ReadDir(filepath.Join(n.containerdRoot, criSandboxesDir))
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids
}

// killLeftovers kills what outlives containerd: the pods' processes (in the
// node's cgroup tree) and the runc shims serving this containerd (named by
// its socket on their command line). containerd leaves both running on
// purpose when it stops.
func (n *KubeletNode) killLeftovers() {
	for range 3 {
		pids := append(cgroupProcesses(n.cgroupRoot), n.shimProcesses()...)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (n *KubeletNode) shimProcesses() []int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, path := range procs {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == n.containerdSocket {
				if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil {
					pids = append(pids, pid)
				}
			}
		}
	}
	return pids
}
