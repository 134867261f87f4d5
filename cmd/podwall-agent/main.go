// Command podwall-agent enforces NetworkPolicy on one node: it watches a
// policy source (a directory of manifests in standalone mode) and keeps the
// policy chains of the pods the podwall plugin attached converged to it.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/dataplane"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stderr, newKernelDataplane)
	stop()
	os.Exit(code)
}

func newKernelDataplane(cfg dataplane.Config, log *slog.Logger) (agent.Dataplane, error) {
	return dataplane.New(cfg, log)
}
