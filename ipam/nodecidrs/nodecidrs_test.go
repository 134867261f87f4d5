package nodecidrs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/nodecidrs"
)

func nodeConfig(t *testing.T, file string) *ipam.Config {
	t.Helper()
	cfg, err := ipam.ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"pods","type":"bridge","ipam":{"type":"podwall-ipam","ranges":[{"subnet":"node"}],"serviceCIDRs":["10.96.0.0/12"],"nodeCIDRsFile":"` + file + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestResolve(t *testing.T) {
	file := filepath.Join(t.TempDir(), "node-podcidrs.json")
	// The contract's example, as the agent writes it.
	if err := os.WriteFile(file, []byte(`{"node":"node-a","podCIDRs":["10.244.3.0/24","fd00:10:244:3::/64"]}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := nodecidrs.Resolve(nodeConfig(t, file))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Ranges) != 2 || cfg.Ranges[0].Subnet.String() != "10.244.3.0/24" || cfg.Ranges[1].Gateway.String() != "fd00:10:244:3::1" {
		t.Errorf("resolved ranges %+v", cfg.Ranges)
	}
}

func TestResolveErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content *string // nil: no file
		dir     bool
		code    uint
		frags   []string
	}{
		{name: "missing file", code: types.ErrTryAgainLater, frags: []string{"FILE", "agent has not written"}},
		{name: "empty list", content: ptr(`{"node":"node-a","podCIDRs":[]}`), code: types.ErrTryAgainLater, frags: []string{"FILE", "node-a", "no podCIDR"}},
		{name: "no list", content: ptr(`{"node":"node-a"}`), code: types.ErrTryAgainLater, frags: []string{"FILE"}},
		{name: "garbage", content: ptr(`{"node":`), code: types.ErrInvalidNetworkConfig, frags: []string{"FILE", "not a podCIDRs file"}},
		{name: "wrong shape", content: ptr(`["10.244.0.0/24"]`), code: types.ErrInvalidNetworkConfig, frags: []string{"FILE"}},
		{name: "invalid CIDR", content: ptr(`{"node":"node-a","podCIDRs":["10.244.0.0/33"]}`), code: types.ErrInvalidNetworkConfig, frags: []string{"FILE", "10.244.0.0/33"}},
		{name: "host bits", content: ptr(`{"node":"node-a","podCIDRs":["10.244.0.1/24"]}`), code: types.ErrInvalidNetworkConfig, frags: []string{"FILE", "10.244.0.1/24"}},
		{name: "inside the service CIDR", content: ptr(`{"node":"node-a","podCIDRs":["10.100.0.0/24"]}`), code: types.ErrInvalidNetworkConfig, frags: []string{"FILE", "node-a", "10.100.0.0/24", "10.96.0.0/12"}},
		{name: "a directory", dir: true, code: types.ErrIOFailure, frags: []string{"FILE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".json")
			switch {
			case tc.dir:
				if err := os.Mkdir(file, 0o755); err != nil {
					t.Fatal(err)
				}
			case tc.content != nil:
				if err := os.WriteFile(file, []byte(*tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := nodecidrs.Resolve(nodeConfig(t, file))
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("want a CNI error, got %v", err)
			}
			if e.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", e.Code, tc.code, e.Msg)
			}
			for _, f := range tc.frags {
				if f == "FILE" {
					f = file
				}
				if !strings.Contains(e.Msg, f) {
					t.Errorf("message %q does not name %s", e.Msg, f)
				}
			}
		})
	}
}

func TestWriteIfChangedWritesTheContractOnlyWhenItChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "node-podcidrs.json")
	f := nodecidrs.File{Node: "node-1", PodCIDRs: []string{"10.244.0.0/24", "fd00:10:244::/64"}}
	changed, err := nodecidrs.WriteIfChanged(path, f)
	if err != nil || !changed {
		t.Fatalf("first write: %v, %v", changed, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"node":"node-1","podCIDRs":["10.244.0.0/24","fd00:10:244::/64"]}` + "\n"; string(data) != want {
		t.Errorf("content %q, want %q", data, want)
	}
	st1, _ := os.Stat(path)
	if changed, err := nodecidrs.WriteIfChanged(path, f); err != nil || changed {
		t.Errorf("same content written again: %v, %v", changed, err)
	}
	if st2, _ := os.Stat(path); !os.SameFile(st1, st2) {
		t.Error("the file was replaced although nothing changed")
	}
	got, cidrs, err := nodecidrs.Parse(data)
	if err != nil || got.Node != "node-1" || len(cidrs) != 2 || cidrs[1].String() != "fd00:10:244::/64" {
		t.Errorf("Parse: %+v, %v, %v", got, cidrs, err)
	}
	if changed, err := nodecidrs.WriteIfChanged(path, nodecidrs.File{Node: "node-1"}); err != nil || !changed {
		t.Errorf("emptied: %v, %v", changed, err)
	}
	if data, _ := os.ReadFile(path); string(data) != `{"node":"node-1","podCIDRs":[]}`+"\n" {
		t.Errorf("no CIDRs written as %q, want an empty list", data)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func ptr(s string) *string { return &s }
