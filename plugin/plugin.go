// Package plugin is the podwall chained CNI plugin: it puts every pod behind
// default-deny chains before it can send a packet, then asks the node agent
// to open what NetworkPolicy allows.
package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// kernelTimeout bounds each invocation's iptables work, the wait for the
// lock included.
const kernelTimeout = 60 * time.Second

// Plugin holds what the handlers share.
type Plugin struct {
	log      *slog.Logger
	linkInfo linkInfo
}

// New returns the plugin; it logs to log (stderr: stdout is the result).
func New(log *slog.Logger) *Plugin {
	return &Plugin{log: log, linkInfo: hostLinkInfo}
}

// Funcs returns the skel handlers.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck, GC: p.cmdGC, Status: p.cmdStatus}
}

// Versions are the CNI versions podwall speaks (chaining needs prevResult,
// which exists from 0.4.0).
func Versions() version.PluginInfo { return version.PluginSupports("0.4.0", "1.0.0", "1.1.0") }

func (p *Plugin) dataplane(c *Config) (*dataplane.Dataplane, error) {
	d, err := dataplane.New(dataplane.Config{StateDir: c.StateDir}, p.log)
	if err != nil {
		return nil, types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("podwall: %v", err), "")
	}
	return d, nil
}

// podAndDataplane reads what ADD and CHECK share: the config, the pod that
// prevResult describes, and the dataplane of this node.
func (p *Plugin) podAndDataplane(args *skel.CmdArgs) (*Config, dataplane.Pod, *dataplane.Dataplane, error) {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, dataplane.Pod{}, nil, err
	}
	res, err := prevResult(c)
	if err != nil {
		return nil, dataplane.Pod{}, nil, err
	}
	pod, err := podFromResult(c, args, res, p.linkInfo)
	if err != nil {
		return nil, dataplane.Pod{}, nil, err
	}
	d, err := p.dataplane(c)
	if err != nil {
		return nil, dataplane.Pod{}, nil, err
	}
	return c, pod, d, nil
}

func (p *Plugin) cmdAdd(args *skel.CmdArgs) error {
	c, pod, d, err := p.podAndDataplane(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	// The pod is isolated before anyone else learns of it: whatever the
	// agent does or fails to do, its first packet meets default deny.
	if err := d.EnsurePod(ctx, pod); err != nil {
		return fmt.Errorf("podwall: %w", err)
	}
	p.attach(c, pod)
	return types.PrintResult(c.PrevResult, c.CNIVersion)
}

// attach asks the agent to program the pod's policy, waiting at most the
// configured time. Failing that, the pod stays default-deny and the agent
// adopts it from the kernel when it comes back: the ADD still succeeds.
func (p *Plugin) attach(c *Config, pod dataplane.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), c.AgentTimeout)
	defer cancel()
	ips := make([]string, len(pod.IPs))
	for i, a := range pod.IPs {
		ips[i] = a.String()
	}
	err := agentapi.NewClient(c.AgentSocket).Attach(ctx, agentapi.Attachment{
		Key: pod.Key, Network: pod.Network, ContainerID: pod.ContainerID, IfName: pod.IfName,
		Namespace: pod.Namespace, Name: pod.Name, IPs: ips, HostIface: pod.HostIface, Layout: string(pod.Layout),
	})
	if err != nil {
		p.log.Warn("podwall: agent did not program the pod; it stays default-deny until the agent adopts it",
			"pod", pod.Namespace+"/"+pod.Name, "key", pod.Key, "error", err)
	}
}

func (p *Plugin) detach(c *Config, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), min(c.AgentTimeout, time.Second))
	defer cancel()
	if err := agentapi.NewClient(c.AgentSocket).Detach(ctx, key); err != nil {
		p.log.Info("podwall: agent not told of the removal; it notices the chains are gone at its next sync", "key", key, "error", err)
	}
}

func (p *Plugin) cmdDel(args *skel.CmdArgs) error {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	d, err := p.dataplane(c)
	if err != nil {
		return err
	}
	key := ruleset.ChainKey(c.Name, args.ContainerID, args.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	if err := d.RemovePod(ctx, key); err != nil {
		return fmt.Errorf("podwall: %w", err)
	}
	p.detach(c, key)
	return nil
}

func (p *Plugin) cmdCheck(args *skel.CmdArgs) error {
	_, pod, d, err := p.podAndDataplane(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	if err := d.CheckPod(ctx, pod); err != nil {
		return fmt.Errorf("podwall: %w", err)
	}
	return nil
}

func (p *Plugin) cmdGC(args *skel.CmdArgs) error {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid, err := validAttachments(args.StdinData)
	if err != nil {
		return err
	}
	// Keys, not IDs, are compared: a dispatch comment may carry a
	// shortened container ID (see dataplane).
	keep := map[string]bool{}
	for _, a := range valid {
		keep[ruleset.ChainKey(c.Name, a.ContainerID, a.IfName)] = true
	}
	d, err := p.dataplane(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	pods, err := d.Pods(ctx)
	if err != nil {
		return fmt.Errorf("podwall: %w", err)
	}
	for _, pod := range pods {
		if pod.Network != c.Name || keep[pod.Key] {
			continue
		}
		if err := d.RemovePod(ctx, pod.Key); err != nil {
			return fmt.Errorf("podwall: removing orphan %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		p.log.Info("podwall: removed chains of a stale attachment", "pod", pod.Namespace+"/"+pod.Name, "key", pod.Key)
		p.detach(c, pod.Key)
	}
	return nil
}

func (p *Plugin) cmdStatus(args *skel.CmdArgs) error {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	d, err := p.dataplane(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	if err := d.Probe(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("podwall cannot program iptables here: %v", err), "")
	}
	return nil
}
