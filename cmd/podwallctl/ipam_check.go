package main

import (
	"flag"
	"fmt"

	"github.com/podwall/podwall/ipam/report"
)

func (a *app) ipamCheck(fs *flag.FlagSet, args []string) int {
	configFile := fs.String("config", "", "the configuration to check: a conflist, a netconf or a bare ipam section")
	if code, done := a.parseLeaf(fs, args); done {
		return code
	}
	if *configFile == "" {
		return a.usageError(fs, "--config is required")
	}
	loaded, code := a.loadConfig(*configFile)
	if loaded == nil {
		return code
	}
	routes, err := a.readRoutes(loaded.Config.OverlapsRange)
	if err != nil {
		// Without the routes no collision can be ruled out.
		return a.fail("reading this node's routes: %v", err)
	}
	rep := report.Check(loaded.Config, routes)
	fmt.Fprintf(a.stdout, "%s %s %s: %s, %d ranges\n", report.LevelInfo, loaded.Shape, *configFile, networkLabel(loaded), len(loaded.Config.Ranges))
	if err := report.WriteCheck(a.stdout, rep); err != nil {
		return a.fail("writing report: %v", err)
	}
	if rep.Count(report.LevelConflict) > 0 {
		return exitFailed
	}
	return exitOK
}

func networkLabel(l *report.LoadedConfig) string {
	if l.Network == "" {
		return "no network name"
	}
	return fmt.Sprintf("network %q", l.Network)
}
