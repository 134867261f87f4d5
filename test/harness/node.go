package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// cleanupTimeout bounds the CNI DELs issued while tearing a node down.
const cleanupTimeout = 2 * time.Minute

// Node is a simulated Kubernetes node: a network namespace that plugins see
// as "the host", with its own links, routes, iptables rules and ipsets.
type Node struct {
	// Dir is a scratch directory removed after the node is torn down, for
	// IPAM data dirs, the libcni cache and plugin config files.
	Dir string

	netns   ns.NetNS
	cniPath []string

	mu       sync.Mutex
	closed   bool
	pods     []*Pod
	networks []*Network
	procs    []*exec.Cmd
}

// NewNode creates a node namespace (lo up, bridge netfilter on when the
// kernel has it) and registers its teardown: processes killed, every
// attachment still up deleted through CNI DEL, pod and node namespaces
// removed. It fails the test if the binaries are not built.
func NewNode(t testing.TB) *Node {
	t.Helper()
	RequireRoot(t)
	cniPath, err := CNIPath()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cniPath[1]); err != nil {
		t.Fatalf("reference plugins missing in %s: run make build", cniPath[1])
	}
	if err := prepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	if err := sweepStaleNetNS(); err != nil {
		t.Logf("sweeping namespaces of dead test processes: %v", err)
	}
	// The temp dir is requested before the node's cleanup is registered, so it
	// is removed after the teardown, which still needs it for CNI DEL.
	node := &Node{Dir: t.TempDir(), cniPath: cniPath}
	node.netns, err = createNetNS("node-" + t.Name())
	if err != nil {
		t.Fatalf("creating node netns: %v", err)
	}
	t.Cleanup(func() { node.teardown(t) })

	// A Kubernetes node sends bridged traffic through iptables.
	for _, key := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
		if err := node.Sysctl(key, "1"); err != nil {
			t.Logf("bridge netfilter unavailable in the node: %v", err)
		}
	}
	return node
}

// Path returns the node namespace's path (/run/netns/...), usable with
// `ip netns exec` while debugging.
func (n *Node) Path() string { return n.netns.Path() }

// NetNS returns the node namespace.
func (n *Node) NetNS() ns.NetNS { return n.netns }

// CNIPath returns the directories plugins are looked up in.
func (n *Node) CNIPath() []string { return append([]string(nil), n.cniPath...) }

// Do runs fn on an OS thread locked into the node namespace.
func (n *Node) Do(fn func() error) error {
	return n.netns.Do(func(ns.NetNS) error { return fn() })
}

// Run runs a command (ip, iptables, ipset, conntrack, ...) inside the node
// namespace and returns its stdout; the error carries its stderr.
func (n *Node) Run(args ...string) (string, error) { return runIn(n.netns, args) }

// MustRun is Run that fails the test on error.
func (n *Node) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Start starts cmd inside the node namespace. The process is killed at
// teardown if still running; waiting for it stays the caller's job.
func (n *Node) Start(cmd *exec.Cmd) error { return n.startIn(n.netns, cmd) }

// Sysctl writes a sysctl of the node namespace, key as in /proc/sys
// ("net/ipv4/conf/eth0.100/rp_filter") or dotted ("net.ipv4.ip_forward").
func (n *Node) Sysctl(key, value string) error { return sysctlIn(n.netns, key, value) }

// AddUplink creates a port-less bridge standing for the node's uplink (the
// kernel has no dummy link type) with the given addresses (CIDR notation),
// which also install their connected routes. With no ports the bridge has no
// carrier, so those routes are flagged linkdown; they are still in the table.
func (n *Node) AddUplink(name string, addrs ...string) error {
	cmds := [][]string{
		{"ip", "link", "add", name, "type", "bridge"},
		{"ip", "link", "set", name, "up"},
	}
	for _, addr := range addrs {
		cmds = append(cmds, []string{"ip", "addr", "add", addr, "dev", name})
	}
	for _, cmd := range cmds {
		if _, err := n.Run(cmd...); err != nil {
			return fmt.Errorf("adding uplink %s: %w", name, err)
		}
	}
	return nil
}

// AddRoute adds a route to the node's main table; spec is the rest of an
// `ip route add` line, e.g. AddRoute("10.8.0.0/16", "dev", "uplink0") or
// AddRoute("172.20.0.0/14", "via", "192.168.50.1").
func (n *Node) AddRoute(dst string, spec ...string) error {
	_, err := n.Run(append([]string{"ip", "route", "add", dst}, spec...)...)
	return err
}

// DelRoute deletes a route added by AddRoute.
func (n *Node) DelRoute(dst string, spec ...string) error {
	_, err := n.Run(append([]string{"ip", "route", "del", dst}, spec...)...)
	return err
}

// Links lists the names of the node namespace's links.
func (n *Node) Links() ([]string, error) { return linkNames(n.netns) }

func (n *Node) startIn(netns ns.NetNS, cmd *exec.Cmd) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("node already torn down")
	}
	if err := netns.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return fmt.Errorf("starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	n.procs = append(n.procs, cmd)
	return nil
}

func (n *Node) register(add func()) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("node already torn down")
	}
	add()
	return nil
}

// teardown undoes everything the node holds, in dependency order, and
// reports a namespace it cannot remove as a test failure (that is a leak).
func (n *Node) teardown(t testing.TB) {
	n.mu.Lock()
	n.closed = true
	procs, networks, pods := n.procs, n.networks, n.pods
	n.mu.Unlock()

	for _, cmd := range procs {
		if cmd.Process != nil {
			_ = cmd.Process.Kill() // already exited is fine
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, network := range networks {
		for _, err := range network.deleteAll(ctx) {
			t.Logf("teardown: %v", err)
		}
	}

	for _, pod := range pods {
		if err := pod.Remove(); err != nil {
			t.Errorf("teardown: removing pod %s/%s: %v", pod.Namespace, pod.Name, err)
		}
	}
	if err := destroyNetNS(n.netns); err != nil {
		t.Errorf("teardown: removing node netns: %v", err)
	}
}

func runIn(netns ns.NetNS, args []string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("run: no command")
	}
	path, err := lookCommand(args[0])
	if err != nil {
		return "", err
	}
	var stdout, stderr strings.Builder
	cmd := exec.Command(path, args[1:]...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := netns.Do(func(ns.NetNS) error { return cmd.Run() }); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func sysctlIn(netns ns.NetNS, key, value string) error {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	path := filepath.Join("/proc/sys", key)
	err := netns.Do(func(ns.NetNS) error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
