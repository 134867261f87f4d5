package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/agent"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

type nullDataplane struct{}

func (nullDataplane) Probe(context.Context) error                   { return nil }
func (nullDataplane) EnsureBase(context.Context) (string, error)    { return "", nil }
func (nullDataplane) Pods(context.Context) ([]dataplane.Pod, error) { return nil, nil }
func (nullDataplane) Apply(context.Context, *ruleset.Desired) (dataplane.ApplyStats, error) {
	return dataplane.ApplyStats{}, nil
}

// TestWaitSeesAFileWrittenJustBefore runs a real agent on a policy dir
// whose watch would only fire after an hour: wait alone must make the
// agent catch up.
func TestWaitSeesAFileWrittenJustBefore(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	src, err := source.NewDir(dir, log, source.WithDebounce(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{Source: src, Dataplane: nullDataplane{}, Mode: policy.ModeDeny, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := agent.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)
	go ag.Run(ctx)
	go agent.Serve(ctx, l, ag, log, time.Second)

	for i := 1; i <= 5; i++ {
		doc := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: x}\nspec: {podSelector: {}}\n"
		name := filepath.Join(dir, "p"+string(rune('0'+i))+".yaml")
		if err := os.WriteFile(name, []byte(strings.ReplaceAll(doc, "%d", string(rune('0'+i)))), 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if r := runCtl("--socket", sock, "wait", "--timeout", "5s"); r.code != exitOK {
			t.Fatalf("wait: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("wait took %v", time.Since(start))
		r := runCtl("--socket", sock, "status", "-o", "json")
		if !strings.Contains(r.stdout, `"policies": `+string(rune('0'+i))) {
			t.Fatalf("after writing %d policies and wait, status says:\n%s", i, r.stdout)
		}
	}
}
