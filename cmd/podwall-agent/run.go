package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podwall/podwall/enforcement/agent"
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
}

func parseFlags(args []string, stderr io.Writer) (*options, int) {
	fs := flag.NewFlagSet("podwall-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var mode, level string
	fs.StringVar(&o.policyDir, "policy-dir", "", "directory of Namespace, Pod and NetworkPolicy manifests (*.yaml, *.yml, *.json) to enforce (required)")
	fs.StringVar(&o.socket, "socket", "", "unix socket to serve the plugin and podwallctl on, e.g. /run/podwall/agent.sock (required); its directory holds the iptables lock")
	fs.StringVar(&mode, "default-policy", string(policy.ModeDeny), "what a pod no policy selects gets: deny (nothing beyond the always-allowed) or kubernetes (standard semantics: open in that direction)")
	fs.StringVar(&o.node, "node-name", "", "this node's name, matched against the pods' spec.nodeName (optional)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: podwall-agent --policy-dir DIR --socket PATH --default-policy deny|kubernetes [--node-name NAME] [--log-level LEVEL]")
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
	if o.policyDir == "" {
		return usageErr("--policy-dir is required")
	}
	if o.socket == "" {
		return usageErr("--socket is required")
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
	newDataplane func(stateDir string, log *slog.Logger) (agent.Dataplane, error)) int {
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
	newDataplane func(stateDir string, log *slog.Logger) (agent.Dataplane, error)) error {
	socket, err := filepath.Abs(o.socket)
	if err != nil {
		return fmt.Errorf("--socket: %w", err)
	}
	if st, err := os.Stat(o.policyDir); err != nil {
		return fmt.Errorf("--policy-dir: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("--policy-dir %s is not a directory", o.policyDir)
	}
	src, err := source.NewDir(o.policyDir, log.With("source", "dir"))
	if err != nil {
		return err
	}
	dp, err := newDataplane(filepath.Dir(socket), log.With("component", "dataplane"))
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	ag, err := agent.New(agent.Config{Source: src, Dataplane: dp, Mode: o.mode, Node: o.node, Log: log})
	if err != nil {
		return err
	}
	l, err := agent.Listen(socket)
	if err != nil {
		return err
	}
	log.Info("podwall-agent started", "policyDir", o.policyDir, "socket", socket, "defaultPolicy", o.mode, "node", o.node)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
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
	start("socket server", func() error { return agent.Serve(ctx, l, ag, log, shutdownGrace) })
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
