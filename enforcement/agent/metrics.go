package agent

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
)

// Metrics is a small set of gauges served in the Prometheus text format.
// The agent exposes a handful of values; a client library would be more
// code than the format.
type Metrics struct {
	mu     sync.Mutex
	gauges map[string]*gauge
}

type gauge struct {
	help  string
	value float64
}

// NewMetrics returns an empty set.
func NewMetrics() *Metrics { return &Metrics{gauges: map[string]*gauge{}} }

// Gauge declares a gauge (idempotent) and returns its setter. name must be
// a valid metric name.
func (m *Metrics) Gauge(name, help string) func(float64) {
	m.mu.Lock()
	if _, ok := m.gauges[name]; !ok {
		m.gauges[name] = &gauge{help: help}
	}
	m.mu.Unlock()
	return func(v float64) {
		m.mu.Lock()
		m.gauges[name].value = v
		m.mu.Unlock()
	}
}

// ServeHTTP writes every gauge, sorted by name.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	names := make([]string, 0, len(m.gauges))
	for n := range m.gauges {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []byte
	for _, n := range names {
		g := m.gauges[n]
		out = fmt.Appendf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", n, g.help, n, n,
			strconv.FormatFloat(g.value, 'g', -1, 64))
	}
	m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write(out)
}

// MetricsServer is implemented by an API that also serves metrics; the
// socket server then answers GET /metrics with them.
type MetricsServer interface {
	Metrics() http.Handler
}
