package k8senv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/harness"
)

// NodeOptions describe a kubelet node.
type NodeOptions struct {
	// Name is the Node's name; default "node-N", N counting the control
	// plane's links.
	Name string
	// PodCIDR is written to the Node's spec.podCIDR(s) once it registers;
	// default 10.244.N.0/24.
	PodCIDR string
	// Conflist, when set, gives the runtime's CNI configuration (e.g.
	// ReferenceConflist), installed before the kubelet starts; the node is
	// then waited for until Ready. When nil the CNI configuration directory
	// stays empty and the node NotReady until the test installs one
	// (install.sh) and calls WaitReady.
	Conflist func(*KubeletNode) []byte
}

// KubeletNode is a Kubernetes node: containerd and the real kubelet
// running inside a node namespace (a harness.Node) connected to the control
// plane, so that the pods' bridge and veths, the CNI plugins' iptables
// rules and the node's address all live in that namespace. The node's
// address sits on a port-less bridge (the kernel has no dummy links). No
// kube-proxy runs.
type KubeletNode struct {
	Name    string
	IP      string // the node's InternalIP
	PodCIDR string
	// Node is the node namespace: Run, Do and Start (for podwall-agent)
	// work there.
	Node *harness.Node
	// Link connects it to the control plane; Link.Kubeconfig is for the
	// node's own processes.
	Link *NodeLink
	// CNIBinDir and CNIConfDir are the runtime's CNI directories: the
	// reference plugins bridge, host-local, loopback and portmap are in
	// the first at start.
	CNIBinDir, CNIConfDir string
	// Dir holds everything else of the node (short, for socket paths).
	Dir string

	cp               *ControlPlane
	tools            Tools
	procs            processGroup
	containerd       *process
	kubelet          *process
	containerdRoot   string
	containerdState  string
	containerdSocket string
	cgroupRoot       string
	host             *hostPaths
}

// nodeIfName carries the node's address.
const nodeIfName = "node0"

// StartKubeletNode starts a node and registers its teardown, which removes
// everything: pods (through the kubelet, so that CNI DEL runs), containerd's
// state and leftover processes, mounts, cgroups, and what the runtime put
// outside the node's directory (/run/containerd/s, /var/lib/cni,
// /var/lib/kubelet/device-plugins, /var/log/containers). Nodes of
// several tests can run at once, each in its namespace; they share only
// the kubelet's fixed device plugin socket path, which no test uses. What
// a killed test binary left is swept by the next StartKubeletNode.
func (cp *ControlPlane) StartKubeletNode(t testing.TB, opts NodeOptions) *KubeletNode {
	t.Helper()
	started := time.Now()
	tools := FindTools(t, true)
	node := harness.NewNode(t)
	if err := sweepStaleNodes(); err != nil {
		t.Logf("sweeping kubelet nodes of dead test processes: %v", err)
	}
	dir, err := newNodeDir()
	if err != nil {
		t.Fatal(err)
	}
	n := &KubeletNode{
		Node:             node,
		Dir:              dir,
		cp:               cp,
		tools:            tools,
		CNIBinDir:        filepath.Join(dir, "cni-bin"),
		CNIConfDir:       filepath.Join(dir, "cni-conf"),
		containerdState:  filepath.Join(dir, "containerd", "state"),
		containerdSocket: filepath.Join(dir, "containerd.sock"),
		cgroupRoot:       filepath.Base(dir),
	}
	t.Cleanup(func() { n.teardown(t) })
	// Not ConnectNode: its cleanup would cut the link before the teardown,
	// which needs it; the link goes with the node namespace.
	if n.Link, err = cp.connectNode(filepath.Base(dir), node.NetNS()); err != nil {
		t.Fatalf("connecting the node to the control plane: %v", err)
	}
	index := int(n.Link.NodeIP.To4()[2])
	n.Name, n.PodCIDR = opts.Name, opts.PodCIDR
	if n.Name == "" {
		n.Name = fmt.Sprintf("node-%d", index)
	}
	if n.PodCIDR == "" {
		n.PodCIDR = fmt.Sprintf("10.244.%d.0/24", index)
	}
	n.IP = fmt.Sprintf("10.197.0.%d", index)

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var conflist []byte
	if opts.Conflist != nil {
		conflist = opts.Conflist(n)
	}
	if err := n.start(ctx, conflist); err != nil {
		t.Fatalf("starting kubelet node %s: %v", n.Name, err)
	}
	if opts.Conflist != nil {
		if err := n.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("kubelet node %s up in %v (namespace %s, dir %s)", n.Name, time.Since(started).Round(time.Millisecond), node.Path(), dir)
	return n
}

func (n *KubeletNode) start(ctx context.Context, conflist []byte) error {
	var err error
	if n.host, err = snapshotHostPaths(); err != nil {
		return err
	}
	if err := n.Node.AddUplink(nodeIfName, n.IP+"/32"); err != nil {
		return err
	}
	// The API server reaches the kubelet (logs, exec) at the node's address.
	if err := n.cp.RouteToNode(n.IP+"/32", n.Link); err != nil {
		return err
	}
	if err := n.installReferencePlugins(); err != nil {
		return err
	}
	if conflist != nil {
		path := filepath.Join(n.CNIConfDir, "10-reference.conflist")
		if err := os.WriteFile(path, conflist, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	if err := createCgroupRoot(n.cgroupRoot); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.startKubelet(); err != nil {
		return err
	}
	return n.register(ctx)
}

// RuntimeCNIVersion is the highest cniVersion the runtime (containerd 1.6,
// libcni 1.1) accepts: it refuses 1.1.0 results ("unsupported CNI result
// version").
const RuntimeCNIVersion = "1.0.0"

// ReferenceConflist is the reference CNI configuration of a node: bridge
// "cni0" with host-local handing out the node's PodCIDR.
func ReferenceConflist(n *KubeletNode) []byte {
	return harness.BridgeConflist("reference", "cni0", harness.HostLocalIPAM(filepath.Join(n.Dir, "host-local"), n.PodCIDR),
		harness.WithCNIVersion(RuntimeCNIVersion))
}

// installReferencePlugins copies the reference plugins that make build put
// in bin/cni into the runtime's CNI bin dir. containerd needs loopback for
// every pod whatever the conflist.
func (n *KubeletNode) installReferencePlugins() error {
	if err := os.MkdirAll(n.CNIConfDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", n.CNIConfDir, err)
	}
	if err := os.MkdirAll(n.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", n.CNIBinDir, err)
	}
	paths, err := harness.CNIPath()
	if err != nil {
		return err
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback", "portmap"} {
		data, err := os.ReadFile(filepath.Join(paths[1], plugin))
		if err != nil {
			return fmt.Errorf("reading reference plugin (run make build): %w", err)
		}
		if err := os.WriteFile(filepath.Join(n.CNIBinDir, plugin), data, 0o755); err != nil {
			return fmt.Errorf("installing %s: %w", plugin, err)
		}
	}
	return nil
}

// register waits for the kubelet's Node object and gives it its pod range.
func (n *KubeletNode) register(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(n.cp.RESTConfig())
	if err != nil {
		return err
	}
	err = poll(ctx, "node "+n.Name+" to register", n.procs.firstExited, func() error {
		_, err := client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		return err
	})
	if err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.PodCIDR, n.PodCIDR)
	if _, err := client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("setting the pod range of node %s: %w", n.Name, err)
	}
	return nil
}

// WaitReady waits until the Node reports Ready, which needs a CNI
// configuration in CNIConfDir.
func (n *KubeletNode) WaitReady(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(n.cp.RESTConfig())
	if err != nil {
		return err
	}
	return poll(ctx, "node "+n.Name+" Ready", n.procs.firstExited, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
			}
		}
		return errors.New("no Ready condition yet")
	})
}

// teardown deletes the node's pods through the API while the kubelet runs
// (it stops their sandboxes, which runs CNI DEL), then stops the kubelet
// and containerd, kills what they leave, and removes their traces.
func (n *KubeletNode) teardown(t testing.TB) {
	if t.Failed() {
		n.procs.mu.Lock()
		for _, p := range n.procs.procs {
			t.Logf("last lines of %s:\n%s", p.logPath, p.logTail(40))
		}
		n.procs.mu.Unlock()
	}
	if n.kubelet != nil {
		if err := n.deletePods(); err != nil {
			t.Logf("teardown of node %s: deleting pods through the API: %v (killing them instead)", n.Name, err)
			t.Logf("last lines of %s:\n%s", n.kubelet.logPath, n.kubelet.logTail(60))
		}
	}
	ids := n.sandboxIDs()
	if err := n.procs.stopAll(); err != nil {
		t.Errorf("teardown of node %s: %v", n.Name, err)
	}
	n.killLeftovers()
	var errs []error
	errs = append(errs, unmountUnder(n.Dir))
	if n.cgroupRoot != "" {
		errs = append(errs, removeCgroupRoot(n.cgroupRoot))
	}
	if n.host != nil {
		errs = append(errs, n.host.restore(ids, n.Dir))
	}
	if points, err := mountPointsUnder(n.Dir); err == nil && len(points) == 0 {
		errs = append(errs, os.RemoveAll(n.Dir))
	} else {
		errs = append(errs, fmt.Errorf("keeping %s: mounts left under it: %v %v", n.Dir, points, err))
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("teardown of node %s: %v", n.Name, err)
	}
}

// podDeletionTimeout bounds how long teardown waits for the kubelet to stop
// the pods it deletes.
const podDeletionTimeout = 60 * time.Second

func (n *KubeletNode) deletePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), podDeletionTimeout)
	defer cancel()
	if err := n.procs.firstExited(); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(n.cp.RESTConfig())
	if err != nil {
		return err
	}
	selector := "spec.nodeName=" + n.Name
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		return err
	}
	grace := int64(1)
	for _, pod := range pods.Items {
		err := client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return poll(ctx, "the pods of node "+n.Name+" to go", n.procs.firstExited, func() error {
		left, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil {
			return err
		}
		if len(left.Items) > 0 {
			return fmt.Errorf("%d pods left", len(left.Items))
		}
		return nil
	})
}
