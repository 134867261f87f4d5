package k8senv

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// nodeLinkIfName is the node end of a link to the control namespace.
const nodeLinkIfName = "k8s-control"

// NodeLink is a node namespace's veth link to the control namespace.
type NodeLink struct {
	// Kubeconfig is podwall-agent's kubeconfig for inside the node
	// namespace: the token of the ServiceAccount kube-system/podwall, bound
	// to the ClusterRole of deploy/ (applied from the repository's files),
	// so that tests run the agent with the least rights a user grants it.
	Kubeconfig string
	// AdminKubeconfig is a cluster-admin kubeconfig for the node namespace.
	AdminKubeconfig string
	// NodeIP is the node end's address, ControlIP the control end's (the
	// node's route to APIServerIP goes through it).
	NodeIP, ControlIP net.IP
	// ControlIfName is the control end's interface name.
	ControlIfName string
}

// ConnectNode links a node namespace (a harness.Node's, say) to the control
// namespace with a veth pair in a /24 of its own (10.198.N.0/24, control
// .1, node .2), routes APIServerIP through it, and writes a kubeconfig for
// the node's processes. name only labels the files. The link is removed
// when the test ends.
func (cp *ControlPlane) ConnectNode(t testing.TB, name string, nodeNS ns.NetNS) *NodeLink {
	t.Helper()
	link, err := cp.connectNode(name, nodeNS)
	if link != nil {
		t.Cleanup(func() {
			if err := cp.disconnect(link); err != nil {
				t.Errorf("removing the link of node %s: %v", name, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("connecting node %s to the control plane: %v", name, err)
	}
	return link
}

func (cp *ControlPlane) connectNode(name string, nodeNS ns.NetNS) (*NodeLink, error) {
	cp.mu.Lock()
	cp.links++
	n := cp.links
	cp.mu.Unlock()
	if n > 250 {
		return nil, errors.New("out of link subnets")
	}
	link := &NodeLink{
		NodeIP:        net.IPv4(10, 198, byte(n), 2).To4(),
		ControlIP:     net.IPv4(10, 198, byte(n), 1).To4(),
		ControlIfName: fmt.Sprintf("node%d", n),
	}
	mask := net.CIDRMask(24, 32)
	err := cp.control.Do(func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: link.ControlIfName},
			PeerName:      nodeLinkIfName,
			PeerNamespace: netlink.NsFd(int(nodeNS.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth %s: %w", link.ControlIfName, err)
		}
		return configureLink(link.ControlIfName, &net.IPNet{IP: link.ControlIP, Mask: mask})
	})
	if err != nil {
		return nil, err
	}
	err = nodeNS.Do(func(ns.NetNS) error {
		if err := configureLink(nodeLinkIfName, &net.IPNet{IP: link.NodeIP, Mask: mask}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: net.ParseIP(APIServerIP).To4(), Mask: net.CIDRMask(32, 32)},
			Gw:  link.ControlIP,
		})
	})
	if err != nil {
		return link, fmt.Errorf("configuring the node end: %w", err)
	}
	link.AdminKubeconfig = filepath.Join(cp.Dir, "node-"+sanitizeName(name)+"-admin.kubeconfig")
	if err := writeKubeconfig(link.AdminKubeconfig, cp.serverURL(), cp.ca.CertPEM, cp.adminCredentials()); err != nil {
		return link, err
	}
	agent, err := cp.agentCredentials()
	if err != nil {
		return link, err
	}
	link.Kubeconfig = filepath.Join(cp.Dir, "node-"+sanitizeName(name)+".kubeconfig")
	if err := writeKubeconfig(link.Kubeconfig, cp.serverURL(), cp.ca.CertPEM, agent); err != nil {
		return link, err
	}
	return link, nil
}

// disconnect deletes the veth pair; it is already gone when the node
// namespace was removed first.
func (cp *ControlPlane) disconnect(link *NodeLink) error {
	return cp.control.Do(func() error {
		l, err := netlink.LinkByName(link.ControlIfName)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
}

// configureLink adds addr to the link named name and sets it up.
func configureLink(name string, addr *net.IPNet) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// sanitizeName keeps file names derived from node names plain.
func sanitizeName(name string) string {
	out := []byte(name)
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			out[i] = '_'
		}
	}
	return string(out)
}

// RouteToNode routes dst (a CIDR or a single address) from the control
// namespace to the node end of link, and turns forwarding on there, so that
// the control namespace can serve as the network between nodes (one node's
// pod range routed through it to another) or reach a node's own address.
func (cp *ControlPlane) RouteToNode(dst string, link *NodeLink) error {
	if _, err := cp.control.Run("ip", "route", "replace", dst, "via", link.NodeIP.String()); err != nil {
		return err
	}
	return cp.control.Sysctl("net/ipv4/ip_forward", "1")
}
