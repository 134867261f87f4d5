package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/podwall/podwall/cniconf"
)

// Exit statuses of the install subcommands beyond the shared ones; install.sh
// passes them on.
const (
	// exitRefused: the active configuration cannot take podwall (cniVersion
	// below 0.4.0, not JSON, no plugins, ...); nothing was changed.
	exitRefused = 3
	// exitNoConfig: the CNI config dir holds no configuration to chain into.
	exitNoConfig = 4
)

func installCommands() *command {
	return &command{name: "install", summary: "edit a node's CNI configuration (used by install.sh)", sub: []*command{
		{
			name: "chain", args: "--cni-conf-dir DIR [--agent-socket PATH] [--dry-run]", run: (*app).installChain,
			summary: "insert podwall right after the main plugin of the configuration the runtime uses\n" +
				"(the lexically first *.conf, *.conflist or *.json in DIR); a single-plugin file\n" +
				"becomes a .conflist. The original is kept in DIR/" + cniconf.BackupDirName + ". Exit 3 when the\n" +
				"configuration is refused (cniVersion below 0.4.0, not JSON, no plugins), 4 when\n" +
				"DIR holds none.",
		},
		{
			name: "write-conflist", args: "--cni-conf-dir DIR [--file NAME] [--network NAME] [--bridge NAME] [--subnet node|CIDR,...] [--service-cidr CIDR,...] [--ipam-data-dir DIR] [--node-cidrs-file FILE] [--cni-version V] [--agent-socket PATH] [--dry-run]",
			run: (*app).installWrite,
			summary: "write podwall's own conflist (bridge + podwall-ipam + podwall + portmap, cniVersion\n" +
				"1.0.0 unless --cni-version) as DIR/NAME, which must sort first in DIR. A different file of that name\n" +
				"is kept in DIR/" + cniconf.BackupDirName + ".",
		},
		{
			name: "restore", args: "--cni-conf-dir DIR [--dry-run]", run: (*app).installRestore,
			summary: "undo chain and write-conflist: remove the files podwall created and put every\n" +
				"original back byte for byte.",
		},
	}}
}

func (a *app) installChain(fs *flag.FlagSet, args []string) int {
	dir := fs.String("cni-conf-dir", "", "the CNI configuration directory")
	socket := fs.String("agent-socket", cniconf.DefaultAgentSocket, "the agent socket named in the inserted plugin")
	dryRun := fs.Bool("dry-run", false, "say what would change, change nothing")
	if code, done := a.parseLeaf(fs, args); done {
		return code
	}
	if *dir == "" {
		return a.usageError(fs, "--cni-conf-dir is required")
	}
	changes, err := cniconf.Dir{Path: *dir}.Chain(*socket, *dryRun)
	return a.reportChanges(changes, err)
}

func (a *app) installWrite(fs *flag.FlagSet, args []string) int {
	dir := fs.String("cni-conf-dir", "", "the CNI configuration directory")
	file := fs.String("file", "00-podwall.conflist", "the conflist's file name")
	network := fs.String("network", "podwall", "the network's name")
	bridge := fs.String("bridge", "podwall0", "the bridge's name")
	subnets := fs.String("subnet", "node", `the pod ranges, comma-separated: "node" (the Node's podCIDRs) or CIDRs`)
	services := fs.String("service-cidr", "", "the cluster's service CIDRs, comma-separated (never handed to pods)")
	socket := fs.String("agent-socket", cniconf.DefaultAgentSocket, "the agent socket named in the podwall plugin")
	dataDir := fs.String("ipam-data-dir", "", "podwall-ipam's dataDir (default: podwall-ipam's own, /var/lib/podwall/ipam)")
	podCIDRs := fs.String("node-cidrs-file", "", `podwall-ipam's nodeCIDRsFile for "node" (default: /var/lib/podwall/node-podcidrs.json)`)
	cniVersion := fs.String("cni-version", cniconf.DefaultOwnCNIVersion, "the conflist's cniVersion, "+cniconf.MinCNIVersion+" to "+cniconf.MaxCNIVersion+" (the runtime must accept it: containerd 1.6 takes at most 1.0.0)")
	dryRun := fs.Bool("dry-run", false, "say what would change, change nothing")
	if code, done := a.parseLeaf(fs, args); done {
		return code
	}
	if *dir == "" {
		return a.usageError(fs, "--cni-conf-dir is required")
	}
	content, err := cniconf.OwnConflist(cniconf.OwnOptions{
		Network: *network, Bridge: *bridge, Subnets: splitList(*subnets), ServiceCIDRs: splitList(*services), AgentSocket: *socket,
		IPAMDataDir: *dataDir, NodeCIDRsFile: *podCIDRs, CNIVersion: *cniVersion,
	})
	if err != nil {
		return a.usageError(fs, "%v", err)
	}
	changes, err := cniconf.Dir{Path: *dir}.WriteOwn(*file, content, *dryRun)
	return a.reportChanges(changes, err)
}

func (a *app) installRestore(fs *flag.FlagSet, args []string) int {
	dir := fs.String("cni-conf-dir", "", "the CNI configuration directory")
	dryRun := fs.Bool("dry-run", false, "say what would change, change nothing")
	if code, done := a.parseLeaf(fs, args); done {
		return code
	}
	if *dir == "" {
		return a.usageError(fs, "--cni-conf-dir is required")
	}
	changes, err := cniconf.Dir{Path: *dir}.Uninstall(*dryRun)
	if err == nil && len(changes) == 0 {
		fmt.Fprintf(a.stdout, "nothing to restore in %s\n", *dir)
	}
	return a.reportChanges(changes, err)
}

// reportChanges prints what was done and maps err to the exit status.
func (a *app) reportChanges(changes []cniconf.Change, err error) int {
	for _, c := range changes {
		fmt.Fprintln(a.stdout, c)
	}
	var refused *cniconf.RefusedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &refused):
		fmt.Fprintf(a.stderr, "podwallctl: refused: %v\n", err)
		return exitRefused
	case errors.Is(err, cniconf.ErrNoConfig):
		fmt.Fprintf(a.stderr, "podwallctl: %v: nothing to chain into (install.sh --write-conflist writes podwall's own)\n", err)
		return exitNoConfig
	default:
		return a.fail("%v", err)
	}
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
