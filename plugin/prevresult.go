package plugin

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// prevResult parses the result of the plugins before us, which ADD and
// CHECK need: without it we do not know the pod's addresses or veth.
func prevResult(c *Config) (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, invalid("podwall: prevResult missing: podwall must be chained after bridge or ptp")
	}
	if err := version.ParsePrevResult(&c.NetConf); err != nil {
		return nil, invalid("podwall: parsing prevResult: %v", err)
	}
	res, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, invalid("podwall: converting prevResult: %v", err)
	}
	return res, nil
}

// linkInfo answers what a host interface is, and the bridge it is a port
// of (empty if none); a field so tests can fake it.
type linkInfo func(name string) (isVeth bool, bridge string, err error)

func hostLinkInfo(name string) (bool, string, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return false, "", fmt.Errorf("host interface %s: %w", name, err)
	}
	if link.Type() != "veth" {
		return false, "", nil
	}
	idx := link.Attrs().MasterIndex
	if idx == 0 {
		return true, "", nil
	}
	master, err := netlink.LinkByIndex(idx)
	if err != nil {
		return true, "", fmt.Errorf("master of %s: %w", name, err)
	}
	if master.Type() != "bridge" {
		return true, "", nil
	}
	return true, master.Attrs().Name, nil
}

// podFromResult builds the dataplane's view of the attachment.
func podFromResult(c *Config, args *skel.CmdArgs, res *current.Result, info linkInfo) (dataplane.Pod, error) {
	ns, name := podIdentity(args.Args)
	p := dataplane.Pod{
		Key:         ruleset.ChainKey(c.Name, args.ContainerID, args.IfName),
		Network:     c.Name,
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Namespace:   ns,
		Name:        name,
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox != "" {
			continue
		}
		isVeth, bridge, err := info(iface.Name)
		if err != nil {
			return p, err
		}
		if !isVeth {
			continue // the bridge itself
		}
		if p.HostIface != "" {
			return p, invalid("podwall: prevResult has two host veths (%s, %s)", p.HostIface, iface.Name)
		}
		p.HostIface = iface.Name
		p.Layout = dataplane.LayoutRouted
		if bridge != "" {
			p.Layout, p.Bridge = dataplane.LayoutBridge, bridge
		}
	}
	if p.HostIface == "" {
		return p, invalid("podwall: prevResult names no host-side veth; podwall must follow bridge or ptp")
	}
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Sandbox == "" {
				continue // an address of the host side (the gateway)
			}
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return p, invalid("podwall: prevResult address %v unusable", ipc.Address)
		}
		p.IPs = append(p.IPs, a.Unmap())
	}
	return p, nil
}

// podIdentity reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS.
func podIdentity(cniArgs string) (ns, name string) {
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			ns = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return ns, name
}
