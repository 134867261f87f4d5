package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
)

// API is what the socket server serves; *Agent implements it.
type API interface {
	Attach(ctx context.Context, a agentapi.Attachment) error
	Detach(ctx context.Context, key string) error
	Sync(ctx context.Context) (agentapi.Status, error)
	Status() agentapi.Status
}

const maxRequestBody = 1 << 20

// Handler serves the agentapi protocol.
func Handler(api API, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentapi.PathAttach, func(w http.ResponseWriter, r *http.Request) {
		var att agentapi.Attachment
		if !decode(w, r, &att) {
			return
		}
		if err := api.Attach(r.Context(), att); err != nil {
			log.Warn("attach", "pod", att.Namespace+"/"+att.Name, "key", att.Key, "err", err)
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST "+agentapi.PathDetach, func(w http.ResponseWriter, r *http.Request) {
		var d agentapi.Detach
		if !decode(w, r, &d) {
			return
		}
		if err := api.Detach(r.Context(), d.Key); err != nil {
			log.Warn("detach", "key", d.Key, "err", err)
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST "+agentapi.PathSync, func(w http.ResponseWriter, r *http.Request) {
		st, err := api.Sync(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET "+agentapi.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.Status())
	})
	mux.HandleFunc("GET "+agentapi.PathHealthz, func(w http.ResponseWriter, r *http.Request) {
		st := api.Status()
		if !st.Ready {
			msg := "not ready: no policy applied yet"
			if st.LastError != "" {
				msg += ": " + st.LastError
			}
			writeJSON(w, http.StatusServiceUnavailable, agentapi.ErrorBody{Error: msg})
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Generation uint64 `json:"generation"`
		}{st.Generation})
	})
	if m, ok := api.(MetricsServer); ok {
		mux.Handle("GET /metrics", m.Metrics())
	}
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, into any) bool {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err == nil && len(data) > maxRequestBody {
		err = errors.New("request body too large")
	}
	if err == nil {
		err = json.Unmarshal(data, into)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, agentapi.ErrorBody{Error: fmt.Sprintf("invalid request: %v", err)})
		return false
	}
	return true
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusServiceUnavailable
	var reqErr *RequestError
	switch {
	case errors.As(err, &reqErr):
		code = http.StatusBadRequest
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	}
	writeJSON(w, code, agentapi.ErrorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Listen opens the agent's unix socket, mode 0600, in a directory created
// 0700 if missing. A socket file left by an agent that died is removed; one
// that an agent still answers on is not, nor is any other kind of file.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	return l, nil
}

func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: exists and is not a socket; not removing it", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s: another agent is listening on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

// Serve serves api on l until ctx ends, then stops accepting, lets
// requests in flight finish for up to grace, and removes the socket file.
func Serve(ctx context.Context, l net.Listener, api API, log *slog.Logger, grace time.Duration) error {
	srv := &http.Server{
		Handler:           Handler(api, log),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		err = srv.Shutdown(sctx)
		cancel()
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	if addr, ok := l.Addr().(*net.UnixAddr); ok {
		if rerr := os.Remove(addr.Name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
