// Command podwall is the chained CNI plugin that puts every pod behind
// default-deny chains from its first packet; see package plugin.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podwall/podwall/plugin"
)

func main() {
	// stdout carries the CNI result; logs go to stderr, which runtimes keep.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	skel.PluginMainFuncs(plugin.New(log).Funcs(), plugin.Versions(), "podwall: per-pod default-deny chains opened by NetworkPolicy")
}
