package datadir_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/ipam"
	"github.com/podwall/podwall/ipam/datadir"
	"github.com/podwall/podwall/ipam/filestore"
)

// dataDir holds network podnet, its configuration recorded as an ADD does,
// network other before its first ADD, and a directory of someone else's.
func dataDir(t *testing.T) (string, *ipam.Config) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := ipam.ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "podnet", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	st, err := filestore.Open(dir, "podnet", quiet)
	if err != nil {
		t.Fatal(err)
	}
	snapshot, err := json.Marshal(cfg.Canonical())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.WriteSnapshot(snapshot); err != nil {
		t.Fatal(err)
	}
	if _, err := filestore.Open(dir, "other", quiet); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "lost+found"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, cfg
}

func names(nets []datadir.Network) []string {
	var out []string
	for _, n := range nets {
		out = append(out, n.Name)
	}
	return out
}

func TestFind(t *testing.T) {
	dir, _ := dataDir(t)
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir, wanted string
		nets        []string
		warning     string // a fragment of the only warning; "" for none
	}{
		{dir, "", []string{"other", "podnet"}, "lost+found is not a podwall-ipam network directory"},
		{dir, "podnet", []string{"podnet"}, ""},
		{dir, "absent", nil, `no directory for network "absent"`},
		{filepath.Join(dir, "podnet"), "", []string{"podnet"}, ""},
		{filepath.Join(dir, "podnet"), "other", []string{"podnet"}, `the configuration is for network "other"; using its ranges anyway`},
		{filepath.Join(dir, "lost+found"), "", nil, "no podwall-ipam network directory under"},
	} {
		nets, warnings, err := datadir.Find(tc.dir, tc.wanted)
		if err != nil {
			t.Errorf("Find(%s, %q): %v", tc.dir, tc.wanted, err)
			continue
		}
		if got := names(nets); !slices.Equal(got, tc.nets) {
			t.Errorf("Find(%s, %q): %q, want %q", tc.dir, tc.wanted, got, tc.nets)
		}
		if (tc.warning == "") != (len(warnings) == 0) || len(warnings) > 1 || (tc.warning != "" && !strings.Contains(warnings[0], tc.warning)) {
			t.Errorf("Find(%s, %q): warnings %q, want %q", tc.dir, tc.wanted, warnings, tc.warning)
		}
		if len(nets) > 0 && !filepath.IsAbs(nets[0].Path) {
			t.Errorf("Find(%s, %q): relative path %s", tc.dir, tc.wanted, nets[0].Path)
		}
	}
	for path, want := range map[string]string{filepath.Join(dir, "missing"): "data dir", file: "is not a directory"} {
		if _, _, err := datadir.Find(path, ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Find(%s): %v, want an error saying %q", path, err, want)
		}
	}
}

func TestReadStoresTakesEachNetworksLastConfigUnlessOverridden(t *testing.T) {
	dir, cfg := dataDir(t)
	nets, _, err := datadir.Find(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	stores, warnings, failures := datadir.ReadStores(nets, nil)
	if len(stores) != 2 || len(failures) != 0 {
		t.Fatalf("stores %+v, failures %q", stores, failures)
	}
	for _, s := range stores {
		if (s.Config != nil) != (s.Network == "podnet") {
			t.Errorf("network %s: config %+v", s.Network, s.Config)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "network other: no config.json yet") {
		t.Errorf("warnings %q", warnings)
	}
	stores, warnings, _ = datadir.ReadStores(nets, cfg)
	if len(warnings) != 0 || stores[0].Config != cfg || stores[1].Config != cfg {
		t.Errorf("override not used: %+v, warnings %q", stores, warnings)
	}
}

func TestLastConfig(t *testing.T) {
	dir, _ := dataDir(t)
	cfg, warning, err := datadir.LastConfig(datadir.Network{Name: "podnet", Path: filepath.Join(dir, "podnet")})
	if err != nil || warning != "" || len(cfg.Ranges) != 2 || !cfg.Ranges[0].Draining {
		t.Errorf("podnet: %+v, %q, %v", cfg, warning, err)
	}
	cfg, warning, err = datadir.LastConfig(datadir.Network{Name: "other", Path: filepath.Join(dir, "other")})
	if err != nil || cfg != nil || !strings.Contains(warning, "network other: no config.json yet") {
		t.Errorf("other: %+v, %q, %v", cfg, warning, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "podnet", filestore.SnapshotFile), []byte(`{"ranges": [{"subnet": "10.0.0.0/33"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, warning, err = datadir.LastConfig(datadir.Network{Name: "podnet", Path: filepath.Join(dir, "podnet")})
	if err != nil || cfg != nil || !strings.Contains(warning, "config.json is invalid") || !strings.Contains(warning, "CNI error code 7") {
		t.Errorf("garbage: %+v, %q, %v", cfg, warning, err)
	}
	if _, _, err := datadir.LastConfig(datadir.Network{Name: "gone", Path: filepath.Join(dir, "gone")}); err == nil || !strings.Contains(err.Error(), "network gone") {
		t.Errorf("missing network: %v", err)
	}
}
