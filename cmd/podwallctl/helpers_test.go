package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/filestore"
	"github.com/podwall/podwall/ipam/report"
)

// result is one in-process run of podwallctl.
type result struct {
	code           int
	stdout, stderr string
}

// runWithRoutes runs podwallctl with a fixed routing table instead of the
// real one, so that tests without root see a known node.
func runWithRoutes(routes []ipam.NodeRoute, args ...string) result {
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, readRoutes: func(relevant func(netip.Prefix) bool) ([]ipam.NodeRoute, error) {
		var out []ipam.NodeRoute
		for _, r := range routes {
			if relevant == nil || relevant(r.Dst) {
				out = append(out, r)
			}
		}
		return out, nil
	}}
	code := a.main(args)
	return result{code, stdout.String(), stderr.String()}
}

// runReal runs podwallctl as main does, against the routes of the network
// namespace of the calling thread.
func runReal(args ...string) result {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

func nodeRoute(dst, kind, name string) ipam.NodeRoute {
	return ipam.NodeRoute{Dst: netip.MustParsePrefix(dst), LinkKind: kind, LinkName: name, Table: 254}
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func parseConfig(t *testing.T, network, ipamSection string) *ipam.Config {
	t.Helper()
	doc := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "ipam": %s}`, network, ipamSection)
	cfg, err := ipam.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	return cfg
}

// allocate hands out one address per active family to each of the named
// containers through the real allocator and store, and records cfg as the
// plugin's snapshot, as an ADD does.
func allocate(t *testing.T, dataDir string, cfg *ipam.Config, containers ...string) []ipam.Record {
	t.Helper()
	st, err := filestore.Open(dataDir, cfg.Network, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	snapshot, err := json.MarshalIndent(cfg.Canonical(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.WriteSnapshot(append(snapshot, '\n')); err != nil {
		t.Fatal(err)
	}
	var recs []ipam.Record
	for _, c := range containers {
		rec, err := ipam.Allocate(st, cfg, ipam.Attachment{ContainerID: c, IfName: "eth0"}, nil)
		if err != nil {
			t.Fatalf("allocating for %s: %v", c, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

func containerNames(prefix string, n int) []string {
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("%s%02d", prefix, i))
	}
	return names
}

type jsonListing struct {
	Allocations []struct {
		IP          string       `json:"ip"`
		ContainerID string       `json:"containerID"`
		IfName      string       `json:"ifname"`
		Network     string       `json:"network"`
		Range       string       `json:"range"`
		State       report.State `json:"state"`
		Detail      string       `json:"detail"`
	} `json:"allocations"`
	Warnings []string `json:"warnings"`
}

func decodeListing(t *testing.T, out string) jsonListing {
	t.Helper()
	var l jsonListing
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list -o json printed no JSON: %v\n%s", err, out)
	}
	return l
}

// stateOf returns the state listed for ip, or "" when ip is not listed.
func (l jsonListing) stateOf(ip string) report.State {
	for _, a := range l.Allocations {
		if a.IP == ip {
			return a.State
		}
	}
	return ""
}

// treeState records every path, size and modification time under dir, to
// prove a command left it alone.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		state[path] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}
