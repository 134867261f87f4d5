// Package report builds what podwallctl shows about podwall-ipam: the
// allocations found in a data dir and the overlaps of a configuration with the
// node's routes. It is pure: files and routes reach it as plain values.
package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
)

// PluginType is the ipam "type" that selects podwall-ipam.
const PluginType = "podwall-ipam"

// Shape is the kind of document a configuration file holds.
type Shape int

const (
	// ShapeConflist is a network configuration list with a "plugins" array.
	ShapeConflist Shape = iota
	// ShapeNetconf is a single plugin's network configuration.
	ShapeNetconf
	// ShapeIPAM is a bare "ipam" section.
	ShapeIPAM
)

func (s Shape) String() string {
	switch s {
	case ShapeConflist:
		return "conflist"
	case ShapeNetconf:
		return "netconf"
	case ShapeIPAM:
		return "ipam section"
	}
	return fmt.Sprintf("Shape(%d)", int(s))
}

// LoadedConfig is a validated configuration and where it came from.
type LoadedConfig struct {
	Config *ipam.Config
	Shape  Shape
	// Network is the network's name; empty for a bare ipam section.
	Network string
}

// LoadConfig validates a conflist, a single netconf or a bare ipam section
// with the plugin's own parser, so that podwallctl accepts exactly what
// podwall-ipam accepts. Every error is a *types.Error carrying the code the
// plugin would return.
func LoadConfig(data []byte) (*LoadedConfig, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode configuration: %v", err), "")
	}
	switch {
	case top["plugins"] != nil:
		return loadConflist(data)
	case top["ipam"] != nil:
		return loadNetconf(data, top["ipam"])
	default:
		return loadIPAMSection(data)
	}
}

func loadConflist(data []byte) (*LoadedConfig, error) {
	var list struct {
		Name       string            `json:"name"`
		CNIVersion string            `json:"cniVersion"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode conflist: %v", err), "")
	}
	var found []map[string]json.RawMessage
	for i, raw := range list.Plugins {
		var plugin map[string]json.RawMessage
		if err := json.Unmarshal(raw, &plugin); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode conflist plugins[%d]: %v", i, err), "")
		}
		typ, err := ipamType(plugin["ipam"])
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("conflist plugins[%d]: %v", i, err), "")
		}
		if typ == PluginType {
			found = append(found, plugin)
		}
	}
	switch len(found) {
	case 0:
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("conflist %q has no plugin whose ipam type is %s", list.Name, PluginType), "")
	case 1:
	default:
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("conflist %q has %d plugins whose ipam type is %s; they would share one allocation store", list.Name, len(found), PluginType), "")
	}
	// The runtime hands each plugin the list's name and version; do the same
	// so that the plugin's parser sees what it sees in production.
	plugin := found[0]
	var err error
	if plugin["name"], err = json.Marshal(list.Name); err != nil {
		return nil, err
	}
	if plugin["cniVersion"], err = json.Marshal(list.CNIVersion); err != nil {
		return nil, err
	}
	netconf, err := json.Marshal(plugin)
	if err != nil {
		return nil, err
	}
	cfg, err := ipam.ParseConfig(netconf)
	if err != nil {
		return nil, err
	}
	return &LoadedConfig{Config: cfg, Shape: ShapeConflist, Network: cfg.Network}, nil
}

func loadNetconf(data []byte, rawIPAM json.RawMessage) (*LoadedConfig, error) {
	typ, err := ipamType(rawIPAM)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if typ != PluginType {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("netconf's ipam type is %q, not %s", typ, PluginType), "")
	}
	cfg, err := ipam.ParseConfig(data)
	if err != nil {
		return nil, err
	}
	return &LoadedConfig{Config: cfg, Shape: ShapeNetconf, Network: cfg.Network}, nil
}

func loadIPAMSection(data []byte) (*LoadedConfig, error) {
	typ, err := ipamType(data)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	// The type may be left out of a bare section, but a section written for
	// another IPAM plugin must not be checked as if it were ours.
	if typ != "" && typ != PluginType {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("ipam type is %q, not %s", typ, PluginType), "")
	}
	cfg, err := ipam.ParseIPAM(bytes.TrimSpace(data))
	if err != nil {
		return nil, err
	}
	return &LoadedConfig{Config: cfg, Shape: ShapeIPAM}, nil
}

// ipamType returns the "type" of an ipam section; empty when there is none.
func ipamType(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var section struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &section); err != nil {
		return "", fmt.Errorf("cannot decode ipam section: %w", err)
	}
	return section.Type, nil
}

// CNIMessage renders an error the way podwall-ipam reports it, code included,
// so that the admin sees what the runtime would see.
func CNIMessage(err error) string {
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		return err.Error()
	}
	msg := fmt.Sprintf("%s (CNI error code %d)", cniErr.Msg, cniErr.Code)
	if cniErr.Details != "" {
		msg += ": " + cniErr.Details
	}
	return msg
}
