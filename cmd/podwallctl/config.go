package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/types"

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
		fmt.Fprintf(a.stderr, "podwallctl: invalid configuration %s: %s\n", path, cniMessage(err))
		return nil, exitUsage
	}
	// Ranges given as "node" are judged as the plugin would hand them out:
	// with the podCIDRs the agent wrote.
	resolved, err := nodecidrs.Resolve(loaded.Config)
	if err != nil {
		fmt.Fprintf(a.stderr, "podwallctl: %s: the Node's podCIDRs are unknown: %s\n", path, cniMessage(err))
		return nil, exitFailed
	}
	loaded.Config = resolved
	return loaded, exitOK
}

// cniMessage renders an error the way podwall-ipam reports it, code included,
// so that the admin sees what the runtime would see.
func cniMessage(err error) string {
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		return err.Error()
	}
	msg := fmt.Sprintf("%s (CNI error code %d)", cniErr.Msg, cniErr.Code)
	if cniErr.Details != "" {
		msg += ": " + cniErr.Details
	}
	return msg
}
