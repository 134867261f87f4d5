package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podwall/podwall/ipam/datadir"
	"github.com/podwall/podwall/ipam/migrate"
	"github.com/podwall/podwall/ipam/report"
)

const (
	migrateArgs = "(--config FILE | --data-dir DIR) [--node-name NAME] [--kubeconfig FILE]\n" +
		"      [--evict [--max-unavailable N] [--timeout 5m] [--force]]"
	migrateSummary = "list the pods of this node holding an address in a draining range (the pods to\n" +
		"recreate to move off it); with --evict, evict them through the Eviction API so\n" +
		"that PodDisruptionBudgets are honoured, N at a time, each awaited until gone or\n" +
		"replaced. A refusal by a budget is retried with backoff until the timeout (per\n" +
		"pod). Pods no controller recreates are evicted only with --force; mirror pods\n" +
		"never (restart them on the node). The draining ranges come from FILE, or from\n" +
		"the config.json of each network in DIR (as of its last ADD). Exit 1 when a pod\n" +
		"could not be evicted."
)

type migrateOptions struct {
	configFile, dataDir string
	node, kubeconfig    string
	evict, force        bool
	maxUnavailable      int
	timeout             time.Duration
	// firstBackoff and pollInterval replace the evictor's defaults when set
	// (tests).
	firstBackoff, pollInterval time.Duration
}

func (a *app) ipamMigrate(fs *flag.FlagSet, args []string) int {
	var o migrateOptions
	fs.StringVar(&o.configFile, "config", "", "the network configuration whose draining ranges to leave: a conflist, a netconf or a bare ipam section")
	fs.StringVar(&o.dataDir, "data-dir", "", "podwall-ipam's dataDir (or one network's directory): take the draining ranges from each network's config.json instead")
	fs.StringVar(&o.node, "node-name", "", "this node's name, matched against the pods' spec.nodeName (default $NODE_NAME, else the hostname)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the API server (default $KUBECONFIG, ~/.kube/config, else the in-cluster config)")
	fs.BoolVar(&o.evict, "evict", false, "evict the pods (without it: a dry run that lists them)")
	fs.IntVar(&o.maxUnavailable, "max-unavailable", 1, "with --evict: how many evicted pods may be going at once")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "with --evict: how long to keep trying to evict one pod and to wait for it to be gone")
	fs.BoolVar(&o.force, "force", false, "with --evict: also evict pods that no controller recreates (they are lost)")
	if code, done := a.parseLeaf(fs, args); done {
		return code
	}
	switch {
	case o.configFile == "" && o.dataDir == "":
		return a.usageError(fs, "--config or --data-dir is required")
	case o.configFile != "" && o.dataDir != "":
		return a.usageError(fs, "--config and --data-dir are mutually exclusive")
	case o.maxUnavailable < 1:
		return a.usageError(fs, "--max-unavailable must be at least 1, not %d", o.maxUnavailable)
	case o.timeout <= 0:
		return a.usageError(fs, "--timeout must be positive, not %v", o.timeout)
	}

	draining, source, code := a.drainingRanges(o)
	if code != exitOK {
		return code
	}
	if len(draining) == 0 {
		fmt.Fprintf(a.stdout, "no draining range in %s: nothing to migrate\n", source)
		return exitOK
	}

	if o.node == "" {
		node, err := defaultNodeName()
		if err != nil {
			return a.usageError(fs, "--node-name is required: %v", err)
		}
		o.node = node
	}
	client, err := kubeClient(o.kubeconfig)
	if err != nil {
		return a.fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.migrate(ctx, client, o, draining)
}

// migrate selects the node's pods inside the draining ranges, then lists
// them (dry run) or evicts them.
func (a *app) migrate(ctx context.Context, client kubernetes.Interface, o migrateOptions, draining []netip.Prefix) int {
	pods, err := migrate.NodePods(ctx, client, o.node)
	if err != nil {
		return a.fail("%v", err)
	}
	candidates := report.PodsToMigrate(draining, pods)
	fmt.Fprintf(a.stdout, "draining ranges: %s\n", joinPrefixes(draining))
	if len(candidates) == 0 {
		fmt.Fprintf(a.stdout, "node %s: no pod holds an address in a draining range: nothing to migrate\n", o.node)
		return exitOK
	}
	fmt.Fprintf(a.stdout, "node %s: %d pods hold an address in a draining range\n", o.node, len(candidates))
	if !o.evict {
		if err := writeCandidates(a.stdout, candidates, o.force); err != nil {
			return a.fail("writing the list: %v", err)
		}
		fmt.Fprintln(a.stdout, "dry run: pass --evict to evict them")
		return exitOK
	}
	e := migrate.NewEvictor(client, migrate.Options{
		MaxInFlight:  o.maxUnavailable,
		Timeout:      o.timeout,
		FirstBackoff: o.firstBackoff,
		PollInterval: o.pollInterval,
		Progress:     a.stdout,
	})
	return a.reportEvictions(e.Run(ctx, candidates, o.force))
}

// drainingRanges reads the draining ranges from the configuration file or
// the data dir, and names where they came from.
func (a *app) drainingRanges(o migrateOptions) ([]netip.Prefix, string, int) {
	if o.configFile != "" {
		loaded, code := a.loadConfig(o.configFile)
		if loaded == nil {
			return nil, "", code
		}
		return report.DrainingRanges(loaded.Config), o.configFile, exitOK
	}
	nets, warnings, err := datadir.Find(o.dataDir, "")
	if err != nil {
		fmt.Fprintf(a.stderr, "podwallctl: %v\n", err)
		return nil, "", exitUsage
	}
	for _, w := range warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}
	var lists [][]netip.Prefix
	for _, n := range nets {
		cfg, warning, err := datadir.LastConfig(n)
		if err != nil {
			fmt.Fprintf(a.stderr, "podwallctl: %v\n", err)
			return nil, "", exitFailed
		}
		if warning != "" {
			fmt.Fprintf(a.stderr, "warning: %s\n", warning)
		}
		if cfg != nil {
			lists = append(lists, report.DrainingRanges(cfg))
		}
	}
	return report.MergeDraining(lists...), o.dataDir, exitOK
}

func writeCandidates(w io.Writer, candidates []report.MigrationCandidate, force bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tIP\tRANGE\tNOTE")
	for _, c := range candidates {
		var ips, ranges []string
		for _, addr := range c.Addresses {
			ips = append(ips, addr.IP.String())
			ranges = append(ranges, addr.Range.String())
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", c.Pod.Namespace, c.Pod.Name, strings.Join(ips, ","), strings.Join(ranges, ","), candidateNote(c.Pod, force))
	}
	return tw.Flush()
}

// candidateNote says why a pod would not simply be evicted.
func candidateNote(p report.Pod, force bool) string {
	switch {
	case p.Mirror:
		return "mirror of a static pod: restart it on the node"
	case p.Terminating:
		return "already terminating"
	case !p.Controlled && !force:
		return "no controller recreates it: evicted only with --force"
	case !p.Controlled:
		return "no controller recreates it: lost once evicted"
	}
	return ""
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// defaultNodeName is $NODE_NAME, else the hostname lowercased as the
// kubelet registers it.
func defaultNodeName() (string, error) {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "", fmt.Errorf("$NODE_NAME is unset and the hostname is unknown (%v)", err)
	}
	return strings.ToLower(host), nil
}

// kubeClient connects the way kubectl does: the given kubeconfig, else
// $KUBECONFIG or ~/.kube/config, else the in-cluster config.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("API server configuration (--kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster): %w", err)
	}
	cfg.UserAgent = "podwallctl"
	cfg.Wrap(migrate.EvictionRefusalsToCaller)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	return client, nil
}

// reportEvictions prints the summary and returns the exit status: failed
// when any pod could not be evicted.
func (a *app) reportEvictions(results []migrate.Result) int {
	var failed []migrate.Result
	for _, r := range results {
		if r.Outcome == migrate.OutcomeFailed {
			failed = append(failed, r)
		}
	}
	fmt.Fprintf(a.stdout, "%d of %d pods moved off the draining ranges (gone or replaced)\n", len(results)-len(failed), len(results))
	if len(failed) == 0 {
		return exitOK
	}
	fmt.Fprintf(a.stderr, "podwallctl: %d pods could not be evicted:\n", len(failed))
	for _, r := range failed {
		fmt.Fprintf(a.stderr, "  %s/%s: %v\n", r.Pod.Namespace, r.Pod.Name, r.Err)
	}
	return exitFailed
}
