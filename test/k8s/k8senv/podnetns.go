package k8senv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/test/harness"
)

// PodNetNS is the network namespace of a pod the kubelet created, where the
// test runs servers and clients itself: no kubectl exec, no image with
// tools. It speaks the harness's protocol: a server answers each
// connection with the pod's "namespace/name" and a newline.
type PodNetNS struct {
	Namespace, Name string
	IP              string
	netns           ns.NetNS
}

// PodNetNS finds the namespace of a Ready pod of this node: the one, among
// the namespace files containerd mounted under the node's directory, whose
// interfaces hold the pod's address. It is closed when the test ends.
func (n *KubeletNode) PodNetNS(t testing.TB, pod *corev1.Pod) *PodNetNS {
	t.Helper()
	p, err := n.FindPodNetNS(pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// FindPodNetNS is PodNetNS for any goroutine; the caller closes it.
func (n *KubeletNode) FindPodNetNS(pod *corev1.Pod) (*PodNetNS, error) {
	p, err := n.findPodNetNS(pod)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return p, nil
}

// Close releases the namespace handle (the namespace lives on with its
// pod).
func (p *PodNetNS) Close() error { return p.netns.Close() }

func (n *KubeletNode) findPodNetNS(pod *corev1.Pod) (*PodNetNS, error) {
	ip := net.ParseIP(pod.Status.PodIP)
	if ip == nil {
		return nil, fmt.Errorf("no pod address in its status (%q)", pod.Status.PodIP)
	}
	paths, err := nsfsMountsUnder(n.Dir)
	if err != nil {
		return nil, err
	}
	for _, path := range paths {
		netns, err := ns.GetNS(path)
		if err != nil {
			continue // a sandbox going away
		}
		found := false
		_ = netns.Do(func(ns.NetNS) error {
			addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
			for _, a := range addrs {
				found = found || a.IP.Equal(ip)
			}
			return err
		})
		if found {
			return &PodNetNS{Namespace: pod.Namespace, Name: pod.Name, IP: pod.Status.PodIP, netns: netns}, nil
		}
		netns.Close()
	}
	return nil, fmt.Errorf("%w (%s) among %d under %s", errNoPodNetNS, ip, len(paths), n.Dir)
}

// nsfsMountsUnder lists the namespace files bind-mounted below dir.
func nsfsMountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	defer f.Close()
	var paths []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		// fields: id parent major:minor root mountpoint options... - fstype source superoptions
		before, after, ok := strings.Cut(scanner.Text(), " - ")
		fields, typeFields := strings.Fields(before), strings.Fields(after)
		if !ok || len(fields) < 5 || len(typeFields) == 0 || typeFields[0] != "nsfs" {
			continue
		}
		if point := unescapeMountPath(fields[4]); strings.HasPrefix(point, dir+"/") {
			paths = append(paths, point)
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return paths, nil
}

// Path returns the namespace file, what the runtime passed as CNI_NETNS.
func (p *PodNetNS) Path() string { return p.netns.Path() }

// NetNS returns the pod's namespace.
func (p *PodNetNS) NetNS() ns.NetNS { return p.netns }

// Do runs fn on an OS thread locked into the pod's namespace.
func (p *PodNetNS) Do(fn func() error) error {
	return p.netns.Do(func(ns.NetNS) error { return fn() })
}

// ServeTCP listens on port inside the pod and answers each connection with
// "namespace/name\n" until the test ends.
func (p *PodNetNS) ServeTCP(t testing.TB, port int) {
	t.Helper()
	harness.ServeTCPIn(t, p, p.Namespace+"/"+p.Name, port)
}

// ConnectTCP connects from inside the pod to addr ("ip:port") and returns
// the first line the peer sends; ctx bounds the whole exchange.
func (p *PodNetNS) ConnectTCP(ctx context.Context, addr string) (string, error) {
	return harness.ConnectTCPFrom(ctx, p, p.Namespace+"/"+p.Name, addr)
}
