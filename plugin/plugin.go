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

// configAndPod reads what ADD and CHECK share: the config and the pod
// that prevResult describes.
func (p *Plugin) configAndPod(args *skel.CmdArgs) (*Config, dataplane.Pod, error) {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, dataplane.Pod{}, err
	}
	res, err := prevResult(c)
	if err != nil {
		return nil, dataplane.Pod{}, err
	}
	pod, err := podFromResult(c, args, res, p.linkInfo)
	if err != nil {
		return nil, dataplane.Pod{}, err
	}
	if err := dataplane.ValidatePod(pod); err != nil {
		return nil, dataplane.Pod{}, invalid("podwall: %v", err)
	}
	return c, pod, nil
}

// cmdAdd has the agent, the one writer of podwall's rules, program the pod
// (its chains, dispatch and policy, in one restore per family) and returns
// once it has: the traffic the pod's policy allows works from its first
// packet, and nothing else does. When the agent does not answer in time
// (down, restarting, not synced), the plugin installs the pod's
// default-deny chains itself, and the agent adopts them when it comes back:
// the ADD still succeeds, and the pod is denied until then.
func (p *Plugin) cmdAdd(args *skel.CmdArgs) error {
	c, pod, err := p.configAndPod(args)
	if err != nil {
		return err
	}
	if pod.Layout == dataplane.LayoutBridge {
		// Without it bridged frames never meet iptables; the agent may not
		// be allowed to write sysctls, the plugin is.
		if err := dataplane.EnableBridgeNetfilter(); err != nil {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("podwall: %v", err), "")
		}
	}
	if err := p.attach(c, pod); err != nil {
		p.log.Warn("podwall: the agent did not program the pod; installing its default-deny chains, the agent adopts them when it returns",
			"pod", pod.Namespace+"/"+pod.Name, "key", pod.Key, "error", err)
		d, err := p.dataplane(c)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
		defer cancel()
		if err := d.EnsurePod(ctx, pod); err != nil {
			return fmt.Errorf("podwall: %w", err)
		}
	}
	return types.PrintResult(c.PrevResult, c.CNIVersion)
}

// attach asks the agent to program the pod, waiting at most the
// configured time.
func (p *Plugin) attach(c *Config, pod dataplane.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.AgentTimeout)
	defer cancel()
	ips := make([]string, len(pod.IPs))
	for i, a := range pod.IPs {
		ips[i] = a.String()
	}
	return agentapi.NewClient(c.AgentSocket).Attach(ctx, agentapi.Attachment{
		Key: pod.Key, Network: pod.Network, ContainerID: pod.ContainerID, IfName: pod.IfName,
		Namespace: pod.Namespace, Name: pod.Name, IPs: ips, HostIface: pod.HostIface, Layout: string(pod.Layout),
		Bridge: pod.Bridge,
	})
}

// remove has the agent remove a pod's chains, or removes them itself when
// the agent does not answer: a DEL must not return while the pod's
// dispatch rules could send a later pod with the same address into them.
func (p *Plugin) remove(ctx context.Context, c *Config, d func() (*dataplane.Dataplane, error), key string) error {
	actx, cancel := context.WithTimeout(ctx, min(c.AgentTimeout, time.Second))
	defer cancel()
	err := agentapi.NewClient(c.AgentSocket).Detach(actx, key)
	if err == nil {
		return nil
	}
	p.log.Info("podwall: the agent did not remove the pod's chains; removing them", "key", key, "error", err)
	dp, err := d()
	if err != nil {
		return err
	}
	if err := dp.RemovePod(ctx, key); err != nil {
		return fmt.Errorf("podwall: %w", err)
	}
	return nil
}

func (p *Plugin) cmdDel(args *skel.CmdArgs) error {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	key := ruleset.ChainKey(c.Name, args.ContainerID, args.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	return p.remove(ctx, c, func() (*dataplane.Dataplane, error) { return p.dataplane(c) }, key)
}

func (p *Plugin) cmdCheck(args *skel.CmdArgs) error {
	c, pod, err := p.configAndPod(args)
	if err != nil {
		return err
	}
	d, err := p.dataplane(c)
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
		if err := p.remove(ctx, c, func() (*dataplane.Dataplane, error) { return d, nil }, pod.Key); err != nil {
			return fmt.Errorf("podwall: removing orphan %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		p.log.Info("podwall: removed chains of a stale attachment", "pod", pod.Namespace+"/"+pod.Name, "key", pod.Key)
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
