package main

import (
	"flag"
	"fmt"
	"net/netip"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/datadir"
	"github.com/podwall/podwall/ipam/report"
)

func (a *app) ipamList(flags *flag.FlagSet, args []string) int {
	dataDir := flags.String("data-dir", "", "podwall-ipam's dataDir, or one network's directory in it")
	configFile := flags.String("config", "", "take the ranges from this conflist, netconf or ipam section instead of each network's config.json")
	output := flags.String("o", "table", "output format: table or json")
	if code, done := a.parseLeaf(flags, args); done {
		return code
	}
	if *dataDir == "" {
		return a.usageError(flags, "--data-dir is required")
	}
	if *output != "table" && *output != "json" {
		return a.usageError(flags, "-o must be table or json, not %q", *output)
	}
	var override *report.LoadedConfig
	if *configFile != "" {
		var code int
		if override, code = a.loadConfig(*configFile); override == nil {
			return code
		}
	}

	var wanted string
	var ranges *ipam.Config
	if override != nil {
		wanted, ranges = override.Network, override.Config
	}
	nets, warnings, err := datadir.Find(*dataDir, wanted)
	if err != nil {
		return a.fail("%v", err)
	}
	stores, moreWarnings, failures := datadir.ReadStores(nets, ranges)
	warnings = append(warnings, moreWarnings...)
	if err := a.addForeignRoutes(stores); err != nil {
		// A listing that cannot tell foreign-route apart would call such
		// addresses active: refuse rather than mislead.
		return a.fail("reading this node's routes: %v", err)
	}

	listing := report.List(stores)
	listing.Warnings = append(warnings, listing.Warnings...)
	for _, w := range listing.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}
	for _, f := range failures {
		fmt.Fprintf(a.stderr, "podwallctl: %s\n", f)
	}
	if *output == "json" {
		err = report.WriteJSON(a.stdout, listing)
	} else {
		err = report.WriteTable(a.stdout, listing.Rows)
	}
	if err != nil {
		return a.fail("writing listing: %v", err)
	}
	if len(failures) > 0 {
		return exitFailed
	}
	return exitOK
}

// addForeignRoutes reads the node's routes once for all networks and gives
// each the ones foreign to its configuration.
func (a *app) addForeignRoutes(stores []report.NetworkStore) error {
	var configs []*ipam.Config
	for _, s := range stores {
		if s.Config != nil {
			configs = append(configs, s.Config)
		}
	}
	if len(configs) == 0 {
		return nil
	}
	routes, err := a.readRoutes(func(p netip.Prefix) bool {
		for _, c := range configs {
			if c.OverlapsRange(p) {
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	for i := range stores {
		if stores[i].Config != nil {
			reserved := map[netip.Addr]bool{}
			for _, r := range stores[i].Scan.Reservations {
				reserved[r.IP] = true
			}
			stores[i].Foreign = stores[i].Config.ForeignRoutes(routes, func(ip netip.Addr) bool { return reserved[ip] })
		}
	}
	return nil
}
