package nodecidrs

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/podwall/podwall/ipam"
	cidrsfile "github.com/podwall/podwall/ipam/nodecidrs"
	"github.com/podwall/podwall/ipam/noderoutes"
)

// DefaultInterval is how often the routes are checked again without a
// change of the Node: a route may be added at any time.
const DefaultInterval = 30 * time.Second

// Event reasons posted on the Node.
const (
	ReasonConflict = "PodCIDRConflict"
	ReasonResolved = "PodCIDRConflictResolved"
)

// Config is what a Watcher needs.
type Config struct {
	// Path of the file (DefaultPath in production).
	Path string
	// Node is this node's name.
	Node string
	// PodCIDRs returns the Node's spec.podCIDRs; ok is false while the
	// Node is not known (not synced yet, or missing), and nothing is
	// written then.
	PodCIDRs func() (cidrs []string, ok bool)
	// Changes receives a value when the Node may have changed.
	Changes <-chan struct{}
	// Routes reads the node's routes; nil reads them with netlink in the
	// process's network namespace.
	Routes func() ([]ipam.NodeRoute, error)
	// Event posts an Event on the Node; nil posts none.
	Event func(ctx context.Context, eventType, reason, message string) error
	// Conflicts is told the number of conflicts after every check.
	Conflicts func(n int)
	Interval  time.Duration
	Log       *slog.Logger
}

// Watcher keeps the file current and watches for conflicts.
type Watcher struct {
	cfg      Config
	reported string // the conflicts last posted, "" for none
	warned   bool
}

// NewWatcher returns a Watcher; Run runs it.
func NewWatcher(cfg Config) (*Watcher, error) {
	if cfg.Path == "" || cfg.Node == "" || cfg.PodCIDRs == nil {
		return nil, errors.New("node pod CIDRs: path, node and PodCIDRs are required")
	}
	if cfg.Routes == nil {
		cfg.Routes = func() ([]ipam.NodeRoute, error) { return noderoutes.Read(nil) }
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg}, nil
}

// Run checks at every change of the Node and every Interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	tick := time.NewTicker(w.cfg.Interval)
	defer tick.Stop()
	for {
		w.Check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-w.cfg.Changes:
		case <-tick.C:
		}
	}
}

// Check writes the file if the pod CIDRs changed and checks them against
// the node's routes.
func (w *Watcher) Check(ctx context.Context) {
	log := w.cfg.Log
	cidrs, ok := w.cfg.PodCIDRs()
	if !ok {
		return
	}
	prefixes, err := ParseCIDRs(cidrs)
	if err != nil {
		log.Error("the Node's pod CIDRs are invalid; not handing them to podwall-ipam", "node", w.cfg.Node, "err", err)
		return
	}
	canonical := make([]string, len(prefixes))
	for i, p := range prefixes {
		canonical[i] = p.String()
	}
	changed, err := cidrsfile.WriteIfChanged(w.cfg.Path, cidrsfile.File{Node: w.cfg.Node, PodCIDRs: canonical})
	switch {
	case err != nil:
		log.Error("writing the node's pod CIDRs for podwall-ipam", "file", w.cfg.Path, "err", err)
	case changed:
		log.Info("node pod CIDRs written for podwall-ipam", "file", w.cfg.Path, "podCIDRs", canonical)
	}
	if len(canonical) == 0 {
		if !w.warned {
			log.Warn("the Node has no pod CIDRs yet; podwall-ipam \"node\" ranges have nothing to hand out", "node", w.cfg.Node)
			w.warned = true
		}
	} else {
		w.warned = false
	}
	w.checkRoutes(ctx, prefixes)
}

func (w *Watcher) checkRoutes(ctx context.Context, prefixes []netip.Prefix) {
	log := w.cfg.Log
	routes, err := w.cfg.Routes()
	if err != nil {
		log.Error("reading the node's routes to check its pod CIDRs", "err", err)
		return
	}
	conflicts := Conflicts(prefixes, routes)
	if w.cfg.Conflicts != nil {
		w.cfg.Conflicts(len(conflicts))
	}
	msg := Describe(conflicts)
	if msg != "" {
		// Every check, not only the first: this is the node's network
		// colliding with the corporate one, and it must not scroll away.
		log.Error("NODE POD CIDR CONFLICT: the block Kubernetes gave this node is routed elsewhere by the node; "+
			"pods may get addresses that collide with that network",
			"node", w.cfg.Node, "conflicts", msg)
	}
	if msg == w.reported {
		return
	}
	eventType, reason, text := "Warning", ReasonConflict, "podwall: "+msg+
		" (pods given these addresses would collide with that network; podwall-ipam avoids the routed part)"
	if msg == "" {
		eventType, reason, text = "Normal", ReasonResolved, "podwall: the node's pod CIDRs no longer overlap any foreign route"
		log.Info("node pod CIDR conflict resolved", "node", w.cfg.Node)
	}
	if w.cfg.Event != nil {
		if err := w.cfg.Event(ctx, eventType, reason, text); err != nil {
			log.Error("posting the node event", "reason", reason, "err", err)
			return // posted again at the next check
		}
	}
	w.reported = msg
}
