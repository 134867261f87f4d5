package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/nodecidrs"
	"github.com/podwall/podwall/enforcement/source"
)

// conflictsMetric counts the node's pod CIDRs' overlaps with foreign routes.
const conflictsMetric = "podwall_node_podcidr_conflicts"

// kubeSource connects to the API server and returns the Kubernetes source
// with the components that go with it: the node's pod CIDRs file and its
// conflict check.
func kubeSource(o *options, log *slog.Logger, metrics *agent.Metrics) (*source.Kube, []component, error) {
	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.UserAgent = "podwall-agent/" + o.node
	// Enough for the initial lists and a burst of direct pod look-ups, not
	// enough for one node to load the API server.
	cfg.QPS, cfg.Burst = 20, 50
	// client-go logs through klog: send it where everything else goes.
	klog.SetSlogLogger(log.With("component", "client-go"))

	typed := rest.CopyConfig(cfg)
	// Protobuf makes the initial list of thousands of pods cheaper.
	typed.ContentType = "application/vnd.kubernetes.protobuf"
	typed.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(typed)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	kube, err := source.NewKube(client, meta, o.node, log.With("source", "kubernetes"))
	if err != nil {
		return nil, nil, err
	}
	setConflicts := metrics.Gauge(conflictsMetric,
		"Number of overlaps of this node's pod CIDRs (Node spec.podCIDRs) with routes of the node that the pod network did not create.")
	w, err := nodecidrs.NewWatcher(nodecidrs.Config{
		Path: o.podCIDRsFile,
		Node: o.node,
		PodCIDRs: func() ([]string, bool) {
			if !kube.NodeSynced() {
				return nil, false
			}
			n := kube.Node()
			if n == nil {
				return nil, false
			}
			if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
				return []string{n.Spec.PodCIDR}, true
			}
			return n.Spec.PodCIDRs, true
		},
		Changes:   kube.NodeChanges(),
		Event:     kube.NodeEvent,
		Conflicts: func(n int) { setConflicts(float64(n)) },
		Interval:  o.podCIDRsCheck,
		Log:       log.With("component", "node-podcidrs"),
	})
	if err != nil {
		return nil, nil, err
	}
	return kube, []component{{"node pod CIDRs", w.Run}}, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster kubernetes config: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// withMetrics serves the agent's API and its metrics on the socket.
type withMetrics struct {
	agent.API
	metrics *agent.Metrics
}

func (w withMetrics) Metrics() http.Handler { return w.metrics }

// serveMetrics serves GET /metrics on l until ctx ends.
func serveMetrics(ctx context.Context, l net.Listener, m *agent.Metrics, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		err := srv.Shutdown(sctx)
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
		return err
	}
}
