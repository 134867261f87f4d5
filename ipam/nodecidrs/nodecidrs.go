// Package nodecidrs is the file through which the agent tells podwall-ipam the
// Node's podCIDRs, for ranges configured as {"subnet": "node"}:
//
//	{"node":"NAME","podCIDRs":["10.244.0.0/24","fd00:10:244::/64"]}
//
// This package owns the format: the agent (enforcement/nodecidrs) writes it
// with WriteIfChanged, atomically; the plugin and podwallctl read it
// (Resolve) only where addresses are handed out or judged: ADD, STATUS,
// podwallctl ipam check/list. DEL, CHECK and GC work by container and never
// need it.
package nodecidrs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
)

// Resolve replaces {"subnet": "node"} in cfg with the podCIDRs read from
// cfg.NodeCIDRsFile. Errors carry the CNI code the plugin returns:
//   - 11 (try again later) while the agent has not written the file or the
//     list is empty: a node that just joined gets its podCIDRs in seconds;
//   - 5 (I/O failure) when the file cannot be read (permissions, a directory);
//   - 7 (invalid configuration) when its content is garbage or a podCIDR
//     breaks a rule of the ranges: the file is part of the network's
//     configuration, and retrying the same content cannot succeed.
func Resolve(cfg *ipam.Config) (*ipam.Config, error) {
	if cfg.NodeRanges == nil {
		return cfg, nil
	}
	path := cfg.NodeCIDRsFile
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipam: ranges use subnet %q but %s does not exist: the podwall agent has not written the Node's podCIDRs yet", ipam.NodeSubnet, path), "")
	}
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("ipam: reading the Node's podCIDRs: %v", err), "")
	}
	f, cidrs, err := Parse(data)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("ipam: %s: %v", path, err), "")
	}
	if len(cidrs) == 0 {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipam: %s lists no podCIDR for node %q: the podwall agent has not written the Node's podCIDRs yet (has the Node spec.podCIDRs?)", path, f.Node), "")
	}
	source := path
	if f.Node != "" {
		source = fmt.Sprintf("%s (node %q)", path, f.Node)
	}
	return cfg.WithNodeCIDRs(cidrs, source)
}
