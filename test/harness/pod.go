package harness

import (
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Pod is a pod sandbox on a Node: a network namespace (lo up) and the
// identity a kubelet hands to CNI.
type Pod struct {
	Namespace   string // Kubernetes namespace
	Name        string
	UID         string
	ContainerID string // sandbox (infra container) id, 64 hex digits
	IfName      string // interface CNI creates in the pod, "eth0" unless changed before Add

	node  *Node
	netns ns.NetNS

	mu      sync.Mutex
	removed bool
}

// NewPod creates a pod namespace on the node; it is removed at node teardown.
func (n *Node) NewPod(t testing.TB, namespace, name string) *Pod {
	t.Helper()
	pod, err := n.CreatePod(namespace, name)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// CreatePod is NewPod for use from any goroutine.
func (n *Node) CreatePod(namespace, name string) (*Pod, error) {
	containerID, err := randomHex(32)
	if err != nil {
		return nil, err
	}
	uid, err := randomUUID()
	if err != nil {
		return nil, err
	}
	netns, err := createNetNS(namespace + "-" + name)
	if err != nil {
		return nil, fmt.Errorf("creating netns of pod %s/%s: %w", namespace, name, err)
	}
	pod := &Pod{Namespace: namespace, Name: name, UID: uid, ContainerID: containerID, IfName: "eth0", node: n, netns: netns}
	if err := n.register(func() { n.pods = append(n.pods, pod) }); err != nil {
		return nil, errors.Join(err, destroyNetNS(netns))
	}
	return pod, nil
}

// Path returns the pod namespace's path, what a runtime passes as CNI_NETNS.
func (p *Pod) Path() string { return p.netns.Path() }

// NetNS returns the pod namespace.
func (p *Pod) NetNS() ns.NetNS { return p.netns }

// Do runs fn on an OS thread locked into the pod namespace.
func (p *Pod) Do(fn func() error) error {
	return p.netns.Do(func(ns.NetNS) error { return fn() })
}

// Run runs a command inside the pod namespace and returns its stdout; the
// error carries its stderr.
func (p *Pod) Run(args ...string) (string, error) { return runIn(p.netns, args) }

// MustRun is Run that fails the test on error.
func (p *Pod) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Start starts cmd inside the pod namespace; it is killed at node teardown.
func (p *Pod) Start(cmd *exec.Cmd) error { return p.node.startIn(p.netns, cmd) }

// Links lists the names of the pod namespace's links.
func (p *Pod) Links() ([]string, error) { return linkNames(p.netns) }

// CNIArgs returns CNI_ARGS as the kubelet's runtime (containerd) sets them.
// IgnoreUnknown=1 is part of it: without it host-local rejects the K8S_ keys.
func (p *Pod) CNIArgs() [][2]string {
	return [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", p.Namespace},
		{"K8S_POD_NAME", p.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		{"K8S_POD_UID", p.UID},
	}
}

// RuntimeConf returns the libcni runtime configuration of the pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.Path(),
		IfName:      p.IfName,
		Args:        p.CNIArgs(),
	}
}

// Attachment identifies the pod's attachment as CNI GC does.
func (p *Pod) Attachment() types.GCAttachment {
	return types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName}
}

// Remove deletes the pod namespace now, as when a sandbox dies before its
// CNI DEL; its Path then names nothing. Removing twice is a no-op.
func (p *Pod) Remove() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return nil
	}
	p.removed = true
	return destroyNetNS(p.netns)
}

func linkNames(netns ns.NetNS) ([]string, error) {
	var names []string
	err := netns.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing links: %w", err)
		}
		for _, link := range links {
			names = append(names, link.Attrs().Name)
		}
		return nil
	})
	return names, err
}

func randomUUID() (string, error) {
	h, err := randomHex(16)
	if err != nil {
		return "", err
	}
	// Version 4, RFC 4122 variant.
	b := []byte(h)
	b[12] = '4'
	b[16] = "89ab"[b[16]%4]
	return fmt.Sprintf("%s-%s-%s-%s-%s", b[0:8], b[8:12], b[12:16], b[16:20], b[20:32]), nil
}
