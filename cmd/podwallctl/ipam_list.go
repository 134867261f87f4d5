package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/filestore"
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

	dirs, warnings, err := findNetworkDirs(*dataDir, override)
	if err != nil {
		return a.fail("%v", err)
	}
	stores, moreWarnings, failures := readNetworkStores(dirs, override)
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

type networkDir struct {
	name, path string
}

// findNetworkDirs resolves DIR, which is either the dataDir or one network's
// directory. A config naming a network narrows a dataDir to that network.
// Nothing is created: podwallctl must be harmless on a live node.
func findNetworkDirs(dir string, override *report.LoadedConfig) ([]networkDir, []string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("data dir %s is not a directory", dir)
	}
	wanted := ""
	if override != nil {
		wanted = override.Network
	}
	var warnings []string
	if filestore.IsNetworkDir(abs) {
		name := filepath.Base(abs)
		if wanted != "" && wanted != name {
			warnings = append(warnings, fmt.Sprintf("%s is the directory of network %q but the configuration is for network %q; using its ranges anyway", dir, name, wanted))
		}
		return []networkDir{{name: name, path: abs}}, warnings, nil
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	var dirs []networkDir
	for _, e := range entries {
		path := filepath.Join(abs, e.Name())
		if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
			continue
		}
		if wanted != "" && e.Name() != wanted {
			continue
		}
		if !filestore.IsNetworkDir(path) {
			warnings = append(warnings, fmt.Sprintf("%s is not a podwall-ipam network directory; skipped", path))
			continue
		}
		dirs = append(dirs, networkDir{name: e.Name(), path: path})
	}
	switch {
	case wanted != "" && len(dirs) == 0:
		warnings = append(warnings, fmt.Sprintf("no directory for network %q under %s", wanted, dir))
	case len(dirs) == 0:
		warnings = append(warnings, fmt.Sprintf("no podwall-ipam network directory under %s", dir))
	}
	return dirs, warnings, nil
}

// readNetworkStores scans each network's store without its lock: a listing
// must never hold up the kubelet, and each file is replaced atomically, so
// what is read is always whole. A network that cannot be read is reported
// in failures and the others are still listed.
func readNetworkStores(dirs []networkDir, override *report.LoadedConfig) (stores []report.NetworkStore, warnings, failures []string) {
	// The scan's own problems are reported once, through the listing.
	quiet := slog.New(slog.DiscardHandler)
	for _, d := range dirs {
		st, err := filestore.OpenExisting(d.path, quiet)
		if err != nil {
			failures = append(failures, fmt.Sprintf("network %s: %v", d.name, err))
			continue
		}
		scan, err := st.Scan()
		if err != nil {
			failures = append(failures, fmt.Sprintf("network %s: reading %s: %v", d.name, d.path, err))
			continue
		}
		ns := report.NetworkStore{Network: d.name, Scan: scan}
		if override != nil {
			ns.Config = override.Config
		} else {
			var warning string
			ns.Config, warning = snapshotConfig(st, d.name)
			if warning != "" {
				warnings = append(warnings, warning)
			}
		}
		stores = append(stores, ns)
	}
	return stores, warnings, failures
}

// snapshotConfig returns the configuration podwall-ipam last ran with for the
// network, or a warning saying why the ranges are unknown.
func snapshotConfig(st *filestore.Store, network string) (*ipam.Config, string) {
	data, err := st.Snapshot()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("network %s: no %s yet (written on the first ADD); ranges unknown, pass --config", network, filestore.SnapshotFile)
	}
	if err != nil {
		return nil, fmt.Sprintf("network %s: reading %s: %v; ranges unknown, pass --config", network, filestore.SnapshotFile, err)
	}
	cfg, err := ipam.ParseIPAM(data)
	if err != nil {
		return nil, fmt.Sprintf("network %s: %s is invalid: %s; ranges unknown, pass --config", network, filestore.SnapshotFile, cniMessage(err))
	}
	return cfg, ""
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
