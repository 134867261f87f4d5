package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/nodecidrs"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/source"
)

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// shutdownGrace is how long requests in flight may take once stopping.
const shutdownGrace = 5 * time.Second

type options struct {
	policyDir string
	socket    string
	mode      policy.Mode
	node      string
	logLevel  slog.Level

	// Kubernetes mode: kube is set when the objects come from an API
	// server, through kubeconfig or, when empty, the in-cluster config.
	kube           bool
	kubeconfig     string
	podCIDRsFile   string
	podCIDRsCheck  time.Duration
	metricsAddress string

	// How often the agent reads the attachments back from the kernel and
	// checks the base jumps, and how long the dataplane trusts its memory
	// of the kernel: positive, by default 30s, 5s and 30s. Tests shorten
	// them to cross several periods in seconds.
	kernelRefresh, baseCheck, maxStateAge time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, int) {
	fs := flag.NewFlagSet("podwall-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var mode, level string
	fs.StringVar(&o.policyDir, "policy-dir", "", "standalone mode: directory of Namespace, Pod and NetworkPolicy manifests (*.yaml, *.yml, *.json) to enforce")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Kubernetes mode: kubeconfig of the API server to read Pods, Namespaces, NetworkPolicies and this Node from (in-cluster config when neither this nor --policy-dir is given and KUBERNETES_SERVICE_HOST is set)")
	fs.StringVar(&o.socket, "socket", "", "unix socket to serve the plugin and podwallctl on, e.g. /run/podwall/agent.sock (required); its directory holds the iptables lock")
	fs.StringVar(&mode, "default-policy", string(policy.ModeDeny), "what a pod no policy selects gets: deny (nothing beyond the always-allowed) or kubernetes (standard semantics: open in that direction)")
	fs.StringVar(&o.node, "node-name", "", "this node's name, matched against the pods' spec.nodeName (optional in standalone mode; required in Kubernetes mode, default $NODE_NAME)")
	fs.StringVar(&o.podCIDRsFile, "pod-cidrs-file", nodecidrs.DefaultPath, "Kubernetes mode: file the Node's spec.podCIDRs are written to, for podwall-ipam's \"node\" ranges")
	fs.DurationVar(&o.podCIDRsCheck, "pod-cidrs-check-interval", nodecidrs.DefaultInterval, "Kubernetes mode: how often the node's routes are checked against its pod CIDRs")
	fs.StringVar(&o.metricsAddress, "metrics-bind-address", "", "also serve GET /metrics on this TCP address (host:port); the socket always serves it")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.kernelRefresh, "kernel-refresh-interval", agent.DefaultKernelRefresh, "how often the pods' attachments are read back from the kernel, to catch reports the agent missed")
	fs.DurationVar(&o.baseCheck, "base-check-interval", agent.DefaultBaseCheck, "how often the jumps into podwall's chains are checked and restored")
	fs.DurationVar(&o.maxStateAge, "max-state-age", dataplane.DefaultMaxStateAge, "how long the dataplane trusts its memory of the kernel before reading the tables back")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: podwall-agent --policy-dir DIR --socket PATH --default-policy deny|kubernetes [--node-name NAME] [--log-level LEVEL]")
		fmt.Fprintln(fs.Output(), "       podwall-agent [--kubeconfig FILE] --node-name NAME --socket PATH --default-policy deny|kubernetes [--pod-cidrs-file FILE] [--metrics-bind-address ADDR] [--log-level LEVEL]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK
		}
		return nil, exitUsage
	}
	usageErr := func(format string, a ...any) (*options, int) {
		fmt.Fprintf(stderr, "podwall-agent: %s\n", fmt.Sprintf(format, a...))
		fs.Usage()
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.policyDir != "" && o.kubeconfig != "":
		return usageErr("--policy-dir (standalone mode) and --kubeconfig (Kubernetes mode) are mutually exclusive")
	case o.kubeconfig != "":
		o.kube = true
	case o.policyDir == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		o.kube = true // in-cluster config
	case o.policyDir == "":
		return usageErr("--policy-dir is required in standalone mode (Kubernetes mode: --kubeconfig, or in-cluster config)")
	}
	if o.kube {
		if o.node == "" {
			o.node = os.Getenv("NODE_NAME")
		}
		if o.node == "" {
			return usageErr("--node-name (or $NODE_NAME) is required in Kubernetes mode")
		}
		if o.podCIDRsFile == "" {
			return usageErr("--pod-cidrs-file must not be empty")
		}
		if o.podCIDRsCheck <= 0 {
			return usageErr("--pod-cidrs-check-interval must be positive")
		}
	}
	if o.socket == "" {
		return usageErr("--socket is required")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--kernel-refresh-interval", o.kernelRefresh}, {"--base-check-interval", o.baseCheck}, {"--max-state-age", o.maxStateAge}} {
		if d.v <= 0 {
			return usageErr("%s must be a positive duration, not %v", d.name, d.v)
		}
	}
	// deny is the product's promise; kubernetes is the API's semantics.
	if mode != string(policy.ModeDeny) && mode != string(policy.ModeKubernetes) {
		return usageErr("--default-policy must be deny or kubernetes, not %q", mode)
	}
	o.mode = policy.Mode(mode)
	if err := o.logLevel.UnmarshalText([]byte(level)); err != nil {
		return usageErr("--log-level: %v", err)
	}
	return &o, exitOK
}

// run runs the agent until ctx ends. newDataplane is the kernel layer, or
// a fake in tests.
func run(ctx context.Context, args []string, stderr io.Writer,
	newDataplane func(cfg dataplane.Config, log *slog.Logger) (agent.Dataplane, error)) int {
	o, code := parseFlags(args, stderr)
	if o == nil {
		return code
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if err := serve(ctx, o, log, newDataplane); err != nil {
		log.Error("podwall-agent failed", "err", err)
		return exitError
	}
	return exitOK
}

func serve(ctx context.Context, o *options, log *slog.Logger,
	newDataplane func(cfg dataplane.Config, log *slog.Logger) (agent.Dataplane, error)) error {
	socket, err := filepath.Abs(o.socket)
	if err != nil {
		return fmt.Errorf("--socket: %w", err)
	}
	metrics := agent.NewMetrics()
	var src source.Source
	var extra []component
	if o.kube {
		kube, comps, err := kubeSource(o, log, metrics)
		if err != nil {
			return err
		}
		src, extra = kube, comps
	} else {
		if st, err := os.Stat(o.policyDir); err != nil {
			return fmt.Errorf("--policy-dir: %w", err)
		} else if !st.IsDir() {
			return fmt.Errorf("--policy-dir %s is not a directory", o.policyDir)
		}
		dir, err := source.NewDir(o.policyDir, log.With("source", "dir"))
		if err != nil {
			return err
		}
		src = dir
	}
	dp, err := newDataplane(dataplane.Config{StateDir: filepath.Dir(socket), MaxStateAge: o.maxStateAge}, log.With("component", "dataplane"))
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	ag, err := agent.New(agent.Config{Source: src, Dataplane: dp, Mode: o.mode, Node: o.node, Log: log,
		KernelRefresh: o.kernelRefresh, BaseCheck: o.baseCheck})
	if err != nil {
		return err
	}
	l, err := agent.Listen(socket)
	if err != nil {
		return err
	}
	if o.kube {
		log.Info("podwall-agent started in Kubernetes mode", "kubeconfig", o.kubeconfig, "socket", socket,
			"defaultPolicy", o.mode, "node", o.node, "podCIDRsFile", o.podCIDRsFile)
	} else {
		log.Info("podwall-agent started", "policyDir", o.policyDir, "socket", socket, "defaultPolicy", o.mode, "node", o.node)
	}
	api := withMetrics{API: ag, metrics: metrics}
	if o.metricsAddress != "" {
		ml, err := net.Listen("tcp", o.metricsAddress)
		if err != nil {
			l.Close()
			return fmt.Errorf("--metrics-bind-address: %w", err)
		}
		extra = append(extra, component{"metrics server", func(ctx context.Context) error {
			return serveMetrics(ctx, ml, metrics, log)
		}})
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3+len(extra))
	start := func(name string, fn func() error) {
		wg.Go(func() {
			if err := fn(); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		})
	}
	start("policy source", func() error { return src.Run(ctx) })
	start("agent", func() error { return ag.Run(ctx) })
	start("socket server", func() error { return agent.Serve(ctx, l, api, log, shutdownGrace) })
	for _, c := range extra {
		start(c.name, func() error { return c.run(ctx) })
	}
	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []string
	for err := range errs {
		all = append(all, err.Error())
	}
	if len(all) > 0 {
		return errors.New(strings.Join(all, "; "))
	}
	// The kernel state stays: pods remain enforced while no agent runs,
	// and the next agent adopts them.
	log.Info("podwall-agent stopped; pods stay enforced")
	return nil
}

// component is one more goroutine of the agent's process.
type component struct {
	name string
	run  func(ctx context.Context) error
}
