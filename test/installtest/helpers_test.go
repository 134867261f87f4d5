package installtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/test/harness"
)

// referenceConflist is a node's CNI configuration as a plain cluster has it:
// bridge with host-local, cniVersion 1.0.0.
const referenceConflist = `{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "DATA_SUBNET"}]],
        "dataDir": "DATA_DIR"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

// scratch is a node's CNI directories and podwall's run dir, under one temp dir.
type scratch struct {
	binDir, confDir, runDir, dir string
	srcDir                       string // the built binaries: install.sh's --src-dir
}

func newScratch(t *testing.T, base string) scratch {
	t.Helper()
	if base == "" {
		base = t.TempDir()
	}
	s := scratch{binDir: filepath.Join(base, "opt-cni-bin"), confDir: filepath.Join(base, "etc-cni-net.d"), runDir: filepath.Join(base, "run-podwall"), dir: base, srcDir: binDir(t)}
	for _, d := range []string{s.binDir, s.confDir, s.runDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// writeConf writes a config file into the conf dir, with mode 0644.
func (s scratch) writeConf(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.confDir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reference writes the reference conflist, its host-local data in the scratch dir.
func (s scratch) reference(t *testing.T, name, subnet string) {
	t.Helper()
	c := strings.ReplaceAll(referenceConflist, "DATA_DIR", filepath.Join(s.dir, "host-local"))
	s.writeConf(t, name, strings.ReplaceAll(c, "DATA_SUBNET", subnet))
}

func (s scratch) args(extra ...string) []string {
	return append([]string{"--src-dir", s.srcDir, "--cni-bin-dir", s.binDir, "--cni-conf-dir", s.confDir,
		"--agent-socket", filepath.Join(s.runDir, "agent.sock")}, extra...)
}

func binDir(t *testing.T) string {
	t.Helper()
	dir, err := harness.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func installScript(t *testing.T) string {
	t.Helper()
	path := filepath.Join(filepath.Dir(binDir(t)), "install.sh")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("install.sh: %v", err)
	}
	for _, bin := range []string{"podwall", "podwall-ipam", "podwallctl"} {
		if _, err := os.Stat(filepath.Join(binDir(t), bin)); err != nil {
			t.Fatalf("%s not built (run make build): %v", bin, err)
		}
	}
	return path
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs install.sh with args, in node's namespace when node is set, on
// the host otherwise (only for what touches no kernel state: install and
// refusals, never --uninstall).
func run(t *testing.T, node *harness.Node, args ...string) result {
	t.Helper()
	if node == nil && slicesContains(args, "--uninstall") {
		t.Fatal("test bug: --uninstall touches the kernel and must run in a node namespace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, installScript(t), args...)
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var err error
	if node != nil {
		err = node.Do(func() error { return cmd.Run() })
	} else {
		err = cmd.Run()
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("running install.sh: %v", err)
	}
	return r
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// tree maps every file under dirs (hidden ones and backups included) to its
// content digest, mode and, with inodes, its inode: equal trees mean nothing
// was rewritten, byte for byte.
func tree(t *testing.T, inodes bool, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range dirs {
		err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			v := fmt.Sprintf("sha256:%x %v", sha256.Sum256(data), info.Mode())
			if inodes {
				v += fmt.Sprintf(" inode:%d", info.Sys().(*syscall.Stat_t).Ino)
			}
			out[path] = v
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func sameTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if got[k] != want[k] {
			t.Errorf("%s: %s is %q, want %q", what, k, got[k], want[k])
		}
	}
}

// activeConflist loads the network a runtime would use from dir, the way
// containerd's go-cni does: libcni.ConfFiles, sorted, the first one.
func activeConflist(t *testing.T, dir string) (string, *libcni.NetworkConfigList) {
	t.Helper()
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil || len(files) == 0 {
		t.Fatalf("no config in %s: %v", dir, err)
	}
	sort.Strings(files)
	if !strings.HasSuffix(files[0], ".conflist") {
		t.Fatalf("active config %s is not a conflist", files[0])
	}
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		t.Fatalf("loading %s: %v", files[0], err)
	}
	return files[0], list
}

func pluginTypes(list *libcni.NetworkConfigList) string {
	var out []string
	for _, p := range list.Plugins {
		out = append(out, p.Network.Type)
	}
	return strings.Join(out, ",")
}

// runtime drives a conflist with libcni as containerd does, finding plugins
// only in the node's CNI bin dir (where install.sh put podwall), executing
// them in the node namespace.
type runtime struct {
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	attached map[*harness.Pod]bool
}

type nodeExec struct {
	*invoke.DefaultExec
	node *harness.Node
}

func (e *nodeExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	var out []byte
	err := e.node.Do(func() error {
		var err error
		out, err = e.RawExec.ExecPlugin(ctx, path, stdin, environ)
		return err
	})
	return out, err
}

func newRuntime(t *testing.T, node *harness.Node, s scratch, list *libcni.NetworkConfigList) *runtime {
	t.Helper()
	exec := &nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, node: node}
	r := &runtime{cni: libcni.NewCNIConfigWithCacheDir([]string{s.binDir}, filepath.Join(s.dir, "cni-cache"), exec), list: list, attached: map[*harness.Pod]bool{}}
	// Registered after the node's teardown, so it runs first: a failing
	// test leaves no attachment behind.
	t.Cleanup(func() {
		for pod := range r.attached {
			if err := r.del(pod); err != nil {
				t.Errorf("cleanup DEL of %s: %v", pod.Name, err)
			}
		}
	})
	return r
}

// add attaches pod (a failed ADD is cleaned with DEL too, as runtimes do).
func (r *runtime) add(pod *harness.Pod) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.attached[pod] = true
	return r.cni.AddNetworkList(ctx, r.list, pod.RuntimeConf())
}

func (r *runtime) check(pod *harness.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.cni.CheckNetworkList(ctx, r.list, pod.RuntimeConf())
}

func (r *runtime) del(pod *harness.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.cni.DelNetworkList(ctx, r.list, pod.RuntimeConf()); err != nil {
		return err
	}
	delete(r.attached, pod)
	return nil
}

// copyReferencePlugins puts the reference plugins in the node's CNI bin dir,
// as a node's runtime package does.
func copyReferencePlugins(t *testing.T, s scratch, plugins ...string) {
	t.Helper()
	for _, p := range plugins {
		data, err := os.ReadFile(filepath.Join(s.srcDir, "cni", p))
		if err != nil {
			t.Fatalf("reference plugin %s (run make build): %v", p, err)
		}
		if err := os.WriteFile(filepath.Join(s.binDir, p), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
