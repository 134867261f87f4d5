package main

import (
	"fmt"
	"os"

	"github.com/podwall/podwall/ipam/nodecidrs"
	"github.com/podwall/podwall/ipam/report"
)

// loadConfig reads and validates a configuration file. On failure it reports
// the problem and returns the exit status.
func (a *app) loadConfig(path string) (*report.LoadedConfig, int) {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(a.stderr, "podwallctl: reading configuration: %v\n", err)
		return nil, exitUsage
	}
	loaded, err := report.LoadConfig(data)
	if err != nil {
		fmt.Fprintf(a.stderr, "podwallctl: invalid configuration %s: %s\n", path, report.CNIMessage(err))
		return nil, exitUsage
	}
	// Ranges given as "node" are judged as the plugin would hand them out:
	// with the podCIDRs the agent wrote.
	resolved, err := nodecidrs.Resolve(loaded.Config)
	if err != nil {
		fmt.Fprintf(a.stderr, "podwallctl: %s: the Node's podCIDRs are unknown: %s\n", path, report.CNIMessage(err))
		return nil, exitFailed
	}
	loaded.Config = resolved
	return loaded, exitOK
}
