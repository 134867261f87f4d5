package harness

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
)

// AddBridge creates the pods' bridge up front, up and with a MAC set
// explicitly, and leaves an existing link of that name alone.
//
// Why: a bridge whose MAC was never set takes the lowest MAC of its ports.
// When the reference bridge plugin creates it during concurrent first ADDs,
// some invocations record a MAC that is gone a moment later, and their CHECK
// fails with "Bridge interface ... Mac doesn't match". Network calls this for
// every bridge plugin of its conflist.
func (n *Node) AddBridge(name string) error {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return fmt.Errorf("generating bridge MAC: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return n.Do(func() error {
		_, err := netlink.LinkByName(name)
		if err == nil {
			return nil
		}
		if !errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("looking up bridge %s: %w", name, err)
		}
		bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(bridge); err != nil {
			return fmt.Errorf("creating bridge %s: %w", name, err)
		}
		if err := netlink.LinkSetHardwareAddr(bridge, mac); err != nil {
			return fmt.Errorf("setting MAC of bridge %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(bridge); err != nil {
			return fmt.Errorf("bringing bridge %s up: %w", name, err)
		}
		return nil
	})
}

// bridgeNames lists the bridges the bridge plugins of a conflist attach to
// ("cni0" when unnamed, as the plugin defaults).
func bridgeNames(list *libcni.NetworkConfigList) []string {
	var names []string
	for _, plugin := range list.Plugins {
		if plugin.Network.Type != "bridge" {
			continue
		}
		conf := struct {
			Bridge string `json:"bridge"`
		}{Bridge: "cni0"}
		if err := json.Unmarshal(plugin.Bytes, &conf); err == nil {
			names = append(names, conf.Bridge)
		}
	}
	return names
}
