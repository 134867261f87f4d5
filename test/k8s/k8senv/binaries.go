package k8senv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podwall/podwall/test/harness"
)

// PauseImage is the reference of the image in bin/k8s/pause.tar: a static
// binary that waits for a signal. Pods use it with imagePullPolicy Never,
// for the sandbox and for their containers: servers and clients are run by
// the test inside the pod's network namespace.
const PauseImage = "localhost/podwall/pause:test"

// Tools are the paths of what a cluster runs.
type Tools struct {
	KubeAPIServer, Kubelet, Kubectl, Etcd string // bin/k8s, built by make k8s-tools
	PauseImageTar                         string // bin/k8s/pause.tar
	Containerd, Ctr, Runc                 string // Debian packages containerd and runc
}

// FindTools locates the binaries a control plane needs, and with forNode
// those a kubelet node needs too, failing the test with how to get the
// missing ones. Kubernetes' come from $PODWALL_BIN_DIR/k8s (bin/k8s).
func FindTools(t testing.TB, forNode bool) Tools {
	t.Helper()
	tools, err := findTools(forNode)
	if err != nil {
		t.Fatal(err)
	}
	return tools
}

func findTools(forNode bool) (Tools, error) {
	bin, err := harness.BinDir()
	if err != nil {
		return Tools{}, err
	}
	dir := filepath.Join(bin, "k8s")
	tools := Tools{
		KubeAPIServer: filepath.Join(dir, "kube-apiserver"),
		Kubelet:       filepath.Join(dir, "kubelet"),
		Kubectl:       filepath.Join(dir, "kubectl"),
		Etcd:          filepath.Join(dir, "etcd"),
		PauseImageTar: filepath.Join(dir, "pause.tar"),
	}
	needed := []string{tools.KubeAPIServer, tools.Kubectl, tools.Etcd}
	if forNode {
		needed = append(needed, tools.Kubelet, tools.PauseImageTar)
	}
	for _, path := range needed {
		if _, err := os.Stat(path); err != nil {
			return Tools{}, fmt.Errorf("%s missing: run make k8s-tools (%w)", path, err)
		}
	}
	if !forNode {
		return tools, nil
	}
	for name, dst := range map[string]*string{"containerd": &tools.Containerd, "ctr": &tools.Ctr, "runc": &tools.Runc} {
		path, err := lookSystemCommand(name)
		if err != nil {
			return Tools{}, fmt.Errorf("%w: run make deps (installs the containerd and runc packages)", err)
		}
		*dst = path
	}
	return tools, nil
}

// lookSystemCommand finds a command also in the sbin directories a
// non-login PATH lacks (runc lives in /usr/sbin).
func lookSystemCommand(name string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		path := filepath.Join(dir, name)
		if info, err := os.Stat(path); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", fmt.Errorf("command %q not found", name)
}
