package agent

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/source"
)

// serve runs an agent with a fake dataplane behind a real unix socket.
func serve(t *testing.T, src source.Source, dp Dataplane) (string, *Agent) {
	t.Helper()
	a := startAgent(t, src, dp, policy.ModeDeny)
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, a, testLog(t), time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	return sock, a
}

func TestSocketRoundTrip(t *testing.T) {
	dp := newFakeDataplane()
	sock, _ := serve(t, newFakeSource(webObjects()), dp)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	c := agentapi.NewClient(sock)
	ctx := context.Background()

	if err := c.Attach(ctx, attachmentA()); err != nil {
		t.Fatal(err)
	}
	if !allows(ingressChain(t, dp.last(), keyA)) {
		t.Error("attach answered before the pod's policy was applied")
	}
	status, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !status.Ready || status.Mode != "deny" || len(status.Pods) != 1 || !status.Pods[0].Programmed ||
		status.Pods[0].IPs[0] != "10.1.0.5" || status.Stats.Chains == 0 || status.LastApply.IsZero() {
		t.Errorf("status: %+v", status)
	}
	synced, err := c.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if synced.Generation <= status.Generation {
		t.Errorf("sync generation %d after %d", synced.Generation, status.Generation)
	}
	if err := c.Detach(ctx, keyA); err != nil {
		t.Fatal(err)
	}
	if status, _ := c.Status(ctx); len(status.Pods) != 0 {
		t.Errorf("pods after detach: %+v", status.Pods)
	}

	err = c.Attach(ctx, agentapi.Attachment{Key: "bad key"})
	var agentErr *agentapi.Error
	if !errors.As(err, &agentErr) || agentErr.Status != http.StatusBadRequest || !strings.Contains(agentErr.Message, "chain key") {
		t.Errorf("invalid attach: %v", err)
	}
	resp := get(t, sock, agentapi.PathHealthz)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz %d", resp.StatusCode)
	}
}

func TestHealthzAndErrorsWhileNotReady(t *testing.T) {
	dp := newFakeDataplane()
	dp.setApplyErr(errKernel)
	sock, _ := serve(t, newFakeSource(webObjects()), dp)
	if resp := get(t, sock, agentapi.PathHealthz); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("healthz of an agent that never applied: %d", resp.StatusCode)
	}
	_, err := agentapi.NewClient(sock).Sync(context.Background())
	var agentErr *agentapi.Error
	if !errors.As(err, &agentErr) || agentErr.Status != http.StatusServiceUnavailable || !strings.Contains(agentErr.Message, errKernel.Error()) {
		t.Errorf("sync with a failing dataplane: %v", err)
	}
}

func get(t *testing.T, sock, path string) *http.Response {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://agent" + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")

	// A socket nobody listens on any more.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = Listen(sock)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	// A live one is left alone.
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	l.Close()

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(regular); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v", err)
	}
	if _, err := os.Stat(regular); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}
