package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/noderoutes"
)

// Exit statuses, shared by every subcommand.
const (
	exitOK = 0
	// exitFailed: the command could not do its job, or found a conflict.
	exitFailed = 1
	// exitUsage: bad command line or invalid configuration.
	exitUsage = 2
)

const defaultSocket = "/run/podwall/agent.sock"

// app is one invocation of podwallctl.
type app struct {
	stdout, stderr io.Writer
	// socket is the agent's unix socket, for the subcommands that talk to it.
	socket string
	// readRoutes reads the routes of the network namespace podwallctl runs in.
	readRoutes func(relevant func(netip.Prefix) bool) ([]ipam.NodeRoute, error)
}

// command is a node of the subcommand tree: a group (sub set) or a leaf (run set).
type command struct {
	name    string
	args    string
	summary string
	sub     []*command
	// run gets a flag set named after the command, whose usage it prints.
	run func(a *app, fs *flag.FlagSet, args []string) int
}

func commands() []*command {
	return []*command{
		{
			name: "wait", args: "[--timeout 10s]", run: (*app).wait,
			summary: "make the agent re-read its policy sources and exit 0 once everything written\n" +
				"before this call is enforced; exit 1 with the reason if that does not happen\n" +
				"within the timeout (agent unreachable, not ready, or failing to apply).",
		},
		{
			name: "status", args: "[-o table|json]", run: (*app).status,
			summary: "show what the agent enforces: readiness, default policy, generation, the local\n" +
				"pods and whether their policy is programmed, policies, problems and counts.\n" +
				"Exit 1 when the agent is unreachable or answers that it is not ready (the\n" +
				"DaemonSet's readiness probe).",
		},
		{name: "ipam", summary: "inspect podwall-ipam and move pods off draining ranges", sub: []*command{
			{
				name: "list", args: "--data-dir DIR [--config FILE] [-o table|json]", run: (*app).ipamList,
				summary: "list the addresses allocated by podwall-ipam with their state: active, draining,\n" +
					"foreign-route (inside a route of this node that the pod network did not create),\n" +
					"unknown-range or unreadable. DIR is the dataDir or one network's directory. The\n" +
					"ranges come from each network's config.json (as of its last ADD) unless --config\n" +
					"is given; a --config that names a network narrows a dataDir to that network.",
			},
			{
				name: "check", args: "--config FILE", run: (*app).ipamCheck,
				summary: "validate FILE (a conflist, a netconf or a bare ipam section) and report every\n" +
					"overlap of its ranges with this node's routes, the service CIDRs, the other\n" +
					"ranges and the exclusions. Fails if an active range overlaps. Ranges given as\n" +
					"\"node\" are the podCIDRs in the config's nodeCIDRsFile (exit 1 without them).",
			},
			{name: "migrate", args: migrateArgs, summary: migrateSummary, run: (*app).ipamMigrate},
		}},
		installCommands(),
	}
}

// run executes podwallctl with args (without the program name) and returns
// the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, readRoutes: noderoutes.Read}
	return a.main(args)
}

func (a *app) main(args []string) int {
	fs := flag.NewFlagSet("podwallctl", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.StringVar(&a.socket, "socket", defaultSocket, "the podwall agent's unix socket")
	fs.Usage = func() {} // printed below, on stdout when asked for
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.usage(a.stdout)
			return exitOK
		}
		a.usage(a.stderr)
		return exitUsage
	}
	return a.dispatch(commands(), fs.Args(), "")
}

func (a *app) dispatch(cmds []*command, args []string, path string) int {
	if len(args) == 0 {
		if path != "" {
			fmt.Fprintf(a.stderr, "podwallctl: %s needs a subcommand\n", path)
		}
		a.usage(a.stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		a.usage(a.stdout)
		return exitOK
	}
	for _, c := range cmds {
		if c.name != args[0] {
			continue
		}
		full := strings.TrimSpace(path + " " + c.name)
		if c.sub != nil {
			return a.dispatch(c.sub, args[1:], full)
		}
		return c.run(a, a.leafFlags(full, c.args, c.summary), args[1:])
	}
	fmt.Fprintf(a.stderr, "podwallctl: unknown command %q\n", strings.TrimSpace(path+" "+args[0]))
	a.usage(a.stderr)
	return exitUsage
}

func (a *app) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: podwallctl [--socket PATH] COMMAND [ARGS]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	var walk func(cmds []*command, path string)
	walk = func(cmds []*command, path string) {
		for _, c := range cmds {
			full := strings.TrimSpace(path + " " + c.name)
			if c.sub != nil {
				walk(c.sub, full)
				continue
			}
			fmt.Fprintf(w, "  %s %s\n", full, c.args)
			fmt.Fprintf(w, "      %s\n", strings.ReplaceAll(c.summary, "\n", "\n      "))
		}
	}
	walk(commands(), "")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Global flags:")
	fmt.Fprintf(w, "  --socket PATH   the podwall agent's unix socket (default %s)\n", defaultSocket)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 success; 1 failure (agent unreachable, wait timed out, status of")
	fmt.Fprintln(w, "an agent that is not ready), or a conflict found by \"ipam check\";")
	fmt.Fprintln(w, "2 usage error or invalid configuration; install: 3 configuration refused,")
	fmt.Fprintln(w, "4 no configuration to chain into.")
}

// leafFlags returns the flag set of a leaf command, printing its own usage.
func (a *app) leafFlags(name, argsText, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("podwallctl "+name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: podwallctl [--socket PATH] %s %s\n\n%s\n\nFlags:\n", name, argsText, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseLeaf parses a leaf's arguments; done is set when the command must stop
// with status code (help asked, or a usage error already reported).
func (a *app) parseLeaf(fs *flag.FlagSet, args []string) (code int, done bool) {
	usage := fs.Usage
	fs.Usage = func() {} // printed below, on stdout when asked for
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(a.stdout)
		fs.Usage()
		return exitOK, true
	}
	if err != nil {
		fs.Usage()
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, true
	}
	return 0, false
}

// usageError reports a bad command line for the leaf of fs.
func (a *app) usageError(fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(a.stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return exitUsage
}

func (a *app) fail(format string, args ...any) int {
	fmt.Fprintf(a.stderr, "podwallctl: %s\n", fmt.Sprintf(format, args...))
	return exitFailed
}
