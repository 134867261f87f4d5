package main

import (
	"strings"
	"testing"
)

func TestUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, exitUsage, "", "Usage: podwallctl [--socket PATH] COMMAND"},
		{"help", []string{"help"}, exitOK, "ipam check --config FILE", ""},
		{"--help", []string{"--help"}, exitOK, "ipam list --data-dir DIR", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"ipam", "frobnicate"}, exitUsage, "", `unknown command "ipam frobnicate"`},
		{"group without subcommand", []string{"ipam"}, exitUsage, "", "ipam needs a subcommand"},
		{"unknown global flag", []string{"--frob", "ipam", "list"}, exitUsage, "", "flag provided but not defined: -frob"},
		{"leaf help", []string{"ipam", "list", "-h"}, exitOK, "Usage: podwallctl [--socket PATH] ipam list --data-dir DIR", ""},
		{"list without data dir", []string{"ipam", "list"}, exitUsage, "", "--data-dir is required"},
		{"list with bad format", []string{"ipam", "list", "--data-dir", "/nonexistent", "-o", "yaml"}, exitUsage, "", `-o must be table or json, not "yaml"`},
		{"list with stray argument", []string{"ipam", "list", "--data-dir", "/x", "extra"}, exitUsage, "", `unexpected argument "extra"`},
		{"check without config", []string{"ipam", "check"}, exitUsage, "", "--config is required"},
		{"check with missing file", []string{"ipam", "check", "--config", "/nonexistent/podwall.conflist"}, exitUsage, "", "reading configuration"},
		{"socket before the command", []string{"--socket", "/tmp/agent.sock", "ipam", "check"}, exitUsage, "", "--config is required"},
		{"list of a missing data dir", []string{"ipam", "list", "--data-dir", "/nonexistent/podwall"}, exitFailed, "", "data dir: stat /nonexistent/podwall"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runWithRoutes(nil, tc.args...)
			if r.code != tc.wantCode {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, tc.wantStdout) || (tc.wantStdout == "" && r.stdout != "") {
				t.Errorf("stdout %q, want it to contain %q", r.stdout, tc.wantStdout)
			}
			if !strings.Contains(r.stderr, tc.wantStderr) || (tc.wantStderr == "" && r.stderr != "") {
				t.Errorf("stderr %q, want it to contain %q", r.stderr, tc.wantStderr)
			}
		})
	}
}

func TestGlobalSocketFlagIsKept(t *testing.T) {
	a := &app{}
	a.stdout, a.stderr = &strings.Builder{}, &strings.Builder{}
	a.main([]string{"--socket", "/tmp/x.sock", "help"})
	if a.socket != "/tmp/x.sock" {
		t.Errorf("socket = %q", a.socket)
	}
	a.main([]string{"help"})
	if a.socket != defaultSocket {
		t.Errorf("default socket = %q", a.socket)
	}
}
