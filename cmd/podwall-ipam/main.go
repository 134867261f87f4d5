// Command podwall-ipam is the CNI IPAM plugin that hands out pod addresses
// from managed ranges, never inside the node's foreign routes, the service
// CIDRs or the admin's exclusions.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podwall/podwall/ipam/ipamplugin"
)

func main() {
	// stdout carries the CNI result; logs go to stderr, which runtimes keep.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := ipamplugin.New(log)
	skel.PluginMainFuncs(p.Funcs(), ipamplugin.Versions(), "podwall-ipam: pod addresses that never collide with the node's networks")
}
