package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/agentapi"
)

// stubAgent answers like an agent whose syncs fail until failures run out.
type stubAgent struct {
	mu       sync.Mutex
	failures int
	syncs    int
	status   agentapi.Status
}

func (s *stubAgent) Attach(context.Context, agentapi.Attachment) error { return nil }
func (s *stubAgent) Detach(context.Context, string) error              { return nil }

func (s *stubAgent) Sync(context.Context) (agentapi.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.syncs++
	if s.failures > 0 {
		s.failures--
		return agentapi.Status{}, errors.New("applying policy: iptables-restore: exit status 4")
	}
	s.status.Ready = true
	s.status.Generation++
	return s.status, nil
}

func (s *stubAgent) Status() agentapi.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// serveStub serves api on a unix socket in a temp dir, after delay.
func serveStub(t *testing.T, api agent.API, delay time.Duration) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv := &http.Server{Handler: agent.Handler(api, slog.New(slog.DiscardHandler))}
	listen := func() {
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Error(err)
			return
		}
		go srv.Serve(l)
	}
	started := make(chan struct{})
	if delay == 0 {
		listen()
		close(started)
	} else {
		go func() {
			defer close(started)
			time.Sleep(delay)
			listen()
		}()
	}
	t.Cleanup(func() {
		<-started
		srv.Close()
	})
	return sock
}

func runCtl(args ...string) result { return runWithRoutes(nil, args...) }

func TestWaitSucceedsOnceTheAgentHasApplied(t *testing.T) {
	stub := &stubAgent{failures: 2, status: agentapi.Status{Mode: "deny", Policies: 3, Problems: []string{"a.yaml: document 1: bad"},
		Pods: []agentapi.PodStatus{{Namespace: "x", Name: "a", Key: "K", Programmed: true}}}}
	sock := serveStub(t, stub, 0)
	start := time.Now()
	r := runCtl("--socket", sock, "wait", "--timeout", "5s")
	if r.code != exitOK {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if stub.syncs != 3 {
		t.Errorf("%d syncs, want 3 (two failures, then success)", stub.syncs)
	}
	if !strings.Contains(r.stdout, "enforced: generation 1, 1 pods (1 programmed), 3 policies, mode deny") {
		t.Errorf("stdout %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "warning: a.yaml: document 1: bad") {
		t.Errorf("stderr %q", r.stderr)
	}
	t.Logf("took %v", time.Since(start))
}

func TestWaitForAnAgentThatIsStillStarting(t *testing.T) {
	sock := serveStub(t, &stubAgent{}, 300*time.Millisecond)
	if r := runCtl("--socket", sock, "wait", "--timeout", "5s"); r.code != exitOK {
		t.Fatalf("exit %d\nstderr %s", r.code, r.stderr)
	}
}

func TestWaitTimesOutWithTheReason(t *testing.T) {
	sock := serveStub(t, &stubAgent{failures: 1 << 30}, 0)
	start := time.Now()
	r := runCtl("--socket", sock, "wait", "--timeout", "400ms")
	if r.code != exitFailed || !strings.Contains(r.stderr, "not enforced within 400ms") ||
		!strings.Contains(r.stderr, "iptables-restore: exit status 4") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("wait took %v with a 400ms timeout", took)
	}

	r = runCtl("--socket", filepath.Join(t.TempDir(), "none.sock"), "wait", "--timeout", "200ms")
	if r.code != exitFailed || !strings.Contains(r.stderr, "no such file or directory") {
		t.Errorf("unreachable agent: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl("wait", "--timeout", "0s")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--timeout must be positive") {
		t.Errorf("zero timeout: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestStatus(t *testing.T) {
	stub := &stubAgent{status: agentapi.Status{
		Ready: true, Mode: "kubernetes", Generation: 7, Policies: 2,
		LastApply: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC),
		LastError: "applying policy: boom",
		Problems:  []string{"NetworkPolicy x/bad: invalid"},
		Stats:     agentapi.Stats{Chains: 4, Rules: 9, Sets: 2, SetEntries: 5},
		Pods: []agentapi.PodStatus{
			{Namespace: "x", Name: "a", Key: "KEYA", IPs: []string{"10.1.0.5", "fd00::5"}, Programmed: true},
			{Namespace: "x", Name: "b", Key: "KEYB"},
		},
	}}
	sock := serveStub(t, stub, 0)
	r := runCtl("--socket", sock, "status")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{
		"Ready:           yes", "Default policy:  kubernetes", "Generation:      7 (last apply 2026-11-25T18:00:00Z)",
		"Last error:      applying policy: boom", "Policies:        2", "4 chains, 9 rules, 2 sets, 5 set entries",
		"Pods:            2 (1 programmed)", "x          a    KEYA  10.1.0.5,fd00::5  yes", "x          b    KEYB  -                 no (default deny)",
		"Problems (1):\n  - NetworkPolicy x/bad: invalid",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCtl("--socket", sock, "status", "-o", "json")
	var got agentapi.Status
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != exitOK {
		t.Fatalf("json: %v, exit %d: %s", err, r.code, r.stdout)
	}
	if got.Generation != 7 || len(got.Pods) != 2 || got.Pods[0].IPs[1] != "fd00::5" {
		t.Errorf("json status: %+v", got)
	}

	r = runCtl("--socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	if r.code != exitFailed || !strings.Contains(r.stderr, "podwallctl: status: agent at") {
		t.Errorf("unreachable: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl("--socket", sock, "status", "-o", "yaml")
	if r.code != exitUsage {
		t.Errorf("bad -o: exit %d", r.code)
	}

	// The readiness probe: an agent that answers but is not ready fails it.
	notReady := serveStub(t, &stubAgent{status: agentapi.Status{Mode: "deny"}}, 0)
	r = runCtl("--socket", notReady, "status")
	if r.code != exitFailed || !strings.Contains(r.stdout, "Ready:           no") || !strings.Contains(r.stderr, "not ready") {
		t.Errorf("not ready: exit %d, stdout %q, stderr %q; want 1", r.code, r.stdout, r.stderr)
	}
}
