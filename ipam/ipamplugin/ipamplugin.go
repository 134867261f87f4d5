// Package ipamplugin is podwall-ipam's CNI face: it binds the pure allocator
// to the file store and to the routes of the node it runs on.
package ipamplugin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/filestore"
	"github.com/podwall/podwall/ipam/nodecidrs"
	"github.com/podwall/podwall/ipam/noderoutes"
)

// LockTimeout bounds the wait for other allocating processes. Past it the
// runtime is told to try again (CNI code 11) rather than left hanging.
const LockTimeout = 60 * time.Second

// Plugin holds what the handlers share.
type Plugin struct {
	Log *slog.Logger
	// ReadRoutes reads the node's routes; noderoutes.Read by default.
	ReadRoutes func(relevant func(netip.Prefix) bool) ([]ipam.NodeRoute, error)
}

// New returns a Plugin that reads the real routes of its network namespace.
func New(log *slog.Logger) *Plugin {
	return &Plugin{Log: log, ReadRoutes: noderoutes.Read}
}

// Funcs returns the skel handlers.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck, GC: p.cmdGC, Status: p.cmdStatus}
}

// Versions are the CNI versions podwall-ipam speaks.
func Versions() version.PluginInfo { return version.All }

// foreignRoutes reads the node's routes now. A host route through a veth
// counts as the pod network's own only for an address st has reserved.
func (p *Plugin) foreignRoutes(cfg *ipam.Config, st ipam.Store) ([]ipam.NodeRoute, error) {
	routes, err := p.ReadRoutes(cfg.OverlapsRange)
	if err != nil {
		// Without the routes, a collision cannot be ruled out: refuse.
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("reading the node's routes: %v", err), "")
	}
	reserved := func(ip netip.Addr) bool {
		_, state, err := st.Owner(ip)
		return err == nil && state != ipam.Free
	}
	return cfg.ForeignRoutes(routes, reserved), nil
}

// withStore opens the network's store and runs fn holding the lock of att,
// or of the whole store when att is nil.
func (p *Plugin) withStore(cfg *ipam.Config, att *ipam.Attachment, fn func(*filestore.Store) error) error {
	st, err := filestore.Open(cfg.DataDir, cfg.Network, p.Log)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	var unlock func()
	if att != nil {
		unlock, err = st.LockAttachment(*att, LockTimeout)
	} else {
		unlock, err = st.Lock(LockTimeout)
	}
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	defer unlock()
	return fn(st)
}

func attachment(args *skel.CmdArgs) *ipam.Attachment {
	return &ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
}

func (p *Plugin) cmdAdd(args *skel.CmdArgs) error {
	cfg, err := ipam.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := requireIdentity(args); err != nil {
		return err
	}
	if cfg, err = nodecidrs.Resolve(cfg); err != nil {
		return err
	}
	var rec ipam.Record
	att := attachment(args)
	err = p.withStore(cfg, att, func(st *filestore.Store) error {
		// Read under the lock: a route added while this ADD waited is seen.
		foreign, err := p.foreignRoutes(cfg, st)
		if err != nil {
			return err
		}
		for _, f := range foreign {
			p.Log.Info("a route of the node overlaps a pod range; its addresses are not handed out", "route", f.String(), "network", cfg.Network)
		}
		if err := writeSnapshot(st, cfg); err != nil {
			p.Log.Warn("could not record the configuration for podwallctl", "error", err)
		}
		rec, err = ipam.Allocate(st, cfg, *att, foreign)
		return err
	})
	if err != nil {
		return err
	}
	return types.PrintResult(buildResult(cfg, rec), cfg.CNIVersion)
}

func requireIdentity(args *skel.CmdArgs) error {
	if args.ContainerID == "" || args.IfName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID and CNI_IFNAME are required", "")
	}
	return nil
}

func writeSnapshot(st *filestore.Store, cfg *ipam.Config) error {
	data, err := json.MarshalIndent(cfg.Canonical(), "", "  ")
	if err != nil {
		return err
	}
	return st.WriteSnapshot(append(data, '\n'))
}

func buildResult(cfg *ipam.Config, rec ipam.Record) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: cfg.Routes}
	for _, a := range rec.Allocations {
		ipc := &current.IPConfig{Address: net.IPNet{IP: net.IP(a.Address.Addr().AsSlice()), Mask: net.CIDRMask(a.Address.Bits(), a.Address.Addr().BitLen())}}
		if a.Gateway.IsValid() {
			ipc.Gateway = net.IP(a.Gateway.AsSlice())
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res
}

func (p *Plugin) cmdDel(args *skel.CmdArgs) error {
	cfg, err := ipam.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := requireIdentity(args); err != nil {
		return err
	}
	att := attachment(args)
	return p.withStore(cfg, att, func(st *filestore.Store) error {
		return ipam.Release(st, *att)
	})
}

func (p *Plugin) cmdCheck(args *skel.CmdArgs) error {
	cfg, err := ipam.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := requireIdentity(args); err != nil {
		return err
	}
	want, err := prevResultIPs(cfg)
	if err != nil {
		return err
	}
	att := attachment(args)
	return p.withStore(cfg, att, func(st *filestore.Store) error {
		return ipam.Check(st, *att, want)
	})
}

// prevResultIPs returns the addresses of prevResult, or nil without one.
func prevResultIPs(cfg *ipam.Config) ([]netip.Addr, error) {
	if len(cfg.PrevResult) == 0 {
		return nil, nil
	}
	conf := types.NetConf{CNIVersion: cfg.CNIVersion, RawPrevResult: map[string]any{}}
	if err := json.Unmarshal(cfg.PrevResult, &conf.RawPrevResult); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decoding prevResult: %v", err), "")
	}
	if err := version.ParsePrevResult(&conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decoding prevResult: %v", err), "")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("converting prevResult: %v", err), "")
	}
	want := []netip.Addr{}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			want = append(want, a.Unmap())
		}
	}
	return want, nil
}

func (p *Plugin) cmdGC(args *skel.CmdArgs) error {
	cfg, err := ipam.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if cfg.ValidAttachments == nil {
		// An absent list would read as "nothing is valid" and release
		// every address of the node.
		return types.NewError(types.ErrInvalidNetworkConfig, "GC needs cni.dev/valid-attachments (an empty list releases everything)", "")
	}
	valid := make([]ipam.Attachment, 0, len(cfg.ValidAttachments))
	for _, a := range cfg.ValidAttachments {
		valid = append(valid, ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return p.withStore(cfg, nil, func(st *filestore.Store) error {
		released, err := ipam.GC(st, valid)
		if err != nil {
			return err
		}
		if err := st.RemoveStaleTemp(); err != nil {
			p.Log.Warn("could not remove leftovers of killed writers", "error", err)
		}
		p.Log.Info("garbage collected", "network", cfg.Network, "released", released)
		return nil
	})
}

func (p *Plugin) cmdStatus(args *skel.CmdArgs) error {
	cfg, err := ipam.ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if cfg, err = nodecidrs.Resolve(cfg); err != nil {
		// Not ready until the agent wrote the Node's podCIDRs.
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	st, err := filestore.Open(cfg.DataDir, cfg.Network, p.Log)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("data dir unusable: %v", err), "")
	}
	if err := st.Probe(); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("data dir %s unusable: %v", st.Dir(), err), "")
	}
	foreign, err := p.foreignRoutes(cfg, st)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	// Reads only: a STATUS never waits behind allocations.
	return ipam.Available(st, cfg, foreign)
}
