// Package datadir finds podwall-ipam's networks in a data dir and reads
// what podwallctl reports on: each network's store and the configuration
// the plugin last ran with. It only reads: podwallctl must be harmless on a
// live node.
package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/filestore"
	"github.com/podwall/podwall/ipam/nodecidrs"
	"github.com/podwall/podwall/ipam/report"
)

// Network is one network's directory.
type Network struct {
	Name, Path string
}

// Find resolves dir, which is either the dataDir or one network's
// directory. A non-empty wanted (the network a configuration names)
// narrows a dataDir to that network. Nothing is created.
func Find(dir, wanted string) ([]Network, []string, error) {
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
	var warnings []string
	if filestore.IsNetworkDir(abs) {
		name := filepath.Base(abs)
		if wanted != "" && wanted != name {
			warnings = append(warnings, fmt.Sprintf("%s is the directory of network %q but the configuration is for network %q; using its ranges anyway", dir, name, wanted))
		}
		return []Network{{Name: name, Path: abs}}, warnings, nil
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	var nets []Network
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
		nets = append(nets, Network{Name: e.Name(), Path: path})
	}
	switch {
	case wanted != "" && len(nets) == 0:
		warnings = append(warnings, fmt.Sprintf("no directory for network %q under %s", wanted, dir))
	case len(nets) == 0:
		warnings = append(warnings, fmt.Sprintf("no podwall-ipam network directory under %s", dir))
	}
	return nets, warnings, nil
}

// ReadStores scans each network's store without its lock: a listing must
// never hold up the kubelet, and each file is replaced atomically, so what
// is read is always whole. The ranges are override's when it is not nil,
// else each network's last configuration. A network that cannot be read is
// reported in failures and the others are still read.
func ReadStores(nets []Network, override *ipam.Config) (stores []report.NetworkStore, warnings, failures []string) {
	// The scan's own problems are reported once, through the listing.
	quiet := slog.New(slog.DiscardHandler)
	for _, n := range nets {
		st, err := filestore.OpenExisting(n.Path, quiet)
		if err != nil {
			failures = append(failures, fmt.Sprintf("network %s: %v", n.Name, err))
			continue
		}
		scan, err := st.Scan()
		if err != nil {
			failures = append(failures, fmt.Sprintf("network %s: reading %s: %v", n.Name, n.Path, err))
			continue
		}
		ns := report.NetworkStore{Network: n.Name, Scan: scan, Config: override}
		if override == nil {
			var warning string
			ns.Config, warning = lastConfig(st, n.Name)
			if warning != "" {
				warnings = append(warnings, warning)
			}
		}
		stores = append(stores, ns)
	}
	return stores, warnings, failures
}

// LastConfig is the configuration podwall-ipam last ran with for network
// n, "node" ranges resolved with the podCIDRs the agent wrote. Before the
// network's first ADD, when it has no address yet, it is nil with a
// warning saying so.
func LastConfig(n Network) (cfg *ipam.Config, warning string, err error) {
	st, err := filestore.OpenExisting(n.Path, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, "", fmt.Errorf("network %s: %w", n.Name, err)
	}
	cfg, warning = lastConfig(st, n.Name)
	if cfg == nil {
		return nil, warning, nil
	}
	resolved, err := nodecidrs.Resolve(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("network %s: the Node's podCIDRs are unknown: %s", n.Name, report.CNIMessage(err))
	}
	return resolved, "", nil
}

// lastConfig returns the configuration the store's snapshot holds, or a
// warning saying why the ranges are unknown.
func lastConfig(st *filestore.Store, network string) (*ipam.Config, string) {
	data, err := st.Snapshot()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("network %s: no %s yet (written on the first ADD); ranges unknown, pass --config", network, filestore.SnapshotFile)
	}
	if err != nil {
		return nil, fmt.Sprintf("network %s: reading %s: %v; ranges unknown, pass --config", network, filestore.SnapshotFile, err)
	}
	cfg, err := ipam.ParseIPAM(data)
	if err != nil {
		return nil, fmt.Sprintf("network %s: %s is invalid: %s; ranges unknown, pass --config", network, filestore.SnapshotFile, report.CNIMessage(err))
	}
	return cfg, ""
}
