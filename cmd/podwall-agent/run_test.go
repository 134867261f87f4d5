package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

type fakeDataplane struct {
	mu   sync.Mutex
	last *ruleset.Desired
}

func (f *fakeDataplane) Probe(context.Context) error                   { return nil }
func (f *fakeDataplane) EnsureBase(context.Context) (string, error)    { return "", nil }
func (f *fakeDataplane) Pods(context.Context) ([]dataplane.Pod, error) { return nil, nil }
func (f *fakeDataplane) Apply(_ context.Context, t dataplane.Target) (dataplane.ApplyStats, error) {
	d := t.Policy
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = d
	return dataplane.ApplyStats{}, nil
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--socket", "/x", "--default-policy", "deny"}, "--policy-dir is required"},
		{[]string{"--policy-dir", dir, "--default-policy", "deny"}, "--socket is required"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--default-policy", ""}, `--default-policy must be deny or kubernetes, not ""`},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--default-policy", "allow"}, `not "allow"`},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--default-policy", "deny", "--log-level", "loud"}, "--log-level"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--default-policy", "deny", "extra"}, `unexpected argument "extra"`},
		{[]string{"--frob"}, "flag provided but not defined"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--kernel-refresh-interval", "0"}, "--kernel-refresh-interval must be a positive duration, not 0s"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--base-check-interval", "-1s"}, "--base-check-interval must be a positive duration, not -1s"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--max-state-age", "0s"}, "--max-state-age must be a positive duration, not 0s"},
		{[]string{"--policy-dir", dir, "--socket", "/x", "--max-state-age", "soon"}, `invalid value "soon" for flag -max-state-age`},
	}
	for _, tc := range tests {
		var stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stderr, nil)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"--policy-dir", filepath.Join(dir, "missing"), "--socket", filepath.Join(dir, "s"), "--default-policy", "deny"}, &stderr, nil)
	if code != exitError || !strings.Contains(stderr.String(), "--policy-dir") {
		t.Errorf("missing policy dir: exit %d, %s", code, stderr.String())
	}
}

func TestPeriodFlags(t *testing.T) {
	dir := t.TempDir()
	var stderr bytes.Buffer
	o, _ := parseFlags([]string{"--policy-dir", dir, "--socket", "/x"}, &stderr)
	if o == nil {
		t.Fatalf("defaults: %s", stderr.String())
	}
	if o.kernelRefresh != agent.DefaultKernelRefresh || o.baseCheck != agent.DefaultBaseCheck || o.maxStateAge != dataplane.DefaultMaxStateAge {
		t.Errorf("defaults: %v %v %v", o.kernelRefresh, o.baseCheck, o.maxStateAge)
	}
	o, _ = parseFlags([]string{"--policy-dir", dir, "--socket", "/x",
		"--kernel-refresh-interval", "300ms", "--base-check-interval", "200ms", "--max-state-age", "400ms"}, &stderr)
	if o == nil {
		t.Fatalf("set: %s", stderr.String())
	}
	if o.kernelRefresh != 300*time.Millisecond || o.baseCheck != 200*time.Millisecond || o.maxStateAge != 400*time.Millisecond {
		t.Errorf("set: %v %v %v", o.kernelRefresh, o.baseCheck, o.maxStateAge)
	}
}

func TestAgentServesAndStopsCleanly(t *testing.T) {
	policies := t.TempDir()
	sock := filepath.Join(t.TempDir(), "podwall", "agent.sock")
	dp := &fakeDataplane{}
	var dpCfg dataplane.Config
	newDP := func(cfg dataplane.Config, _ *slog.Logger) (agent.Dataplane, error) {
		dpCfg = cfg
		return dp, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr safeBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--policy-dir", policies, "--socket", sock, "--default-policy", "kubernetes", "--node-name", "n1", "--max-state-age", "750ms"}, &stderr, newDP)
	}()

	c := agentapi.NewClient(sock)
	deadline := time.Now().Add(5 * time.Second)
	var st agentapi.Status
	var err error
	for st, err = c.Sync(ctx); err != nil; st, err = c.Sync(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("agent never answered: %v\n%s", err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !st.Ready || st.Mode != "kubernetes" {
		t.Errorf("status %+v", st)
	}
	if dpCfg.StateDir != filepath.Dir(sock) {
		t.Errorf("dataplane state dir %q, want the socket's directory", dpCfg.StateDir)
	}
	if dpCfg.MaxStateAge != 750*time.Millisecond {
		t.Errorf("dataplane max state age %v, want --max-state-age's 750ms", dpCfg.MaxStateAge)
	}
	if err := os.WriteFile(filepath.Join(policies, "p.yaml"), []byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err = c.Sync(ctx); err != nil || st.Policies != 1 {
		t.Errorf("sync after writing a policy: %+v, %v", st, err)
	}

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit %d\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop")
	}
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if !strings.Contains(stderr.String(), "pods stay enforced") {
		t.Errorf("log: %s", stderr.String())
	}
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
