package cniconf_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podwall/podwall/cniconf"
)

const reference = `{
	"cniVersion": "1.0.0",
	"name": "containerd-net",
	"plugins": [
		{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
		 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
		{"type": "portmap", "capabilities": {"portMappings": true}}
	]
}
`

func TestActiveFileIsTheLexicallyFirstConfig(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"20-b.conflist", "10-a.conf", "05-x.txt", "99.json"}, "10-a.conf"},
		{[]string{"10-bridge.conflist", "10-bridge.conf"}, "10-bridge.conf"},
		{[]string{".tmp.conflist.tmp-1", "a.json"}, "a.json"},
		{[]string{"README", "x.yaml"}, ""},
	} {
		got, ok := cniconf.ActiveFile(tc.names)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("ActiveFile(%v) = %q, want %q", tc.names, got, tc.want)
		}
	}
}

func pluginTypes(t *testing.T, data []byte) string {
	t.Helper()
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("not a conflist: %v\n%s", err, data)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	return strings.Join(types, ",")
}

func TestChainInsertsAfterTheMainPlugin(t *testing.T) {
	name, out, changed, err := cniconf.Chain("10-containerd-net.conflist", []byte(reference), "/run/podwall/agent.sock")
	if err != nil || !changed || name != "10-containerd-net.conflist" {
		t.Fatalf("Chain: %q %v %v", name, changed, err)
	}
	if got := pluginTypes(t, out); got != "bridge,podwall,portmap" {
		t.Errorf("plugins %s", got)
	}
	if !strings.Contains(string(out), `"agentSocket": "/run/podwall/agent.sock"`) || !strings.HasPrefix(string(out), "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\"") {
		t.Errorf("key order or podwall entry lost:\n%s", out)
	}
	_, again, changed, err := cniconf.Chain(name, out, "/run/podwall/agent.sock")
	if err != nil || changed || string(again) != string(out) {
		t.Errorf("second Chain changed something: %v %v", changed, err)
	}
	// A different socket, or podwall in the wrong place, is normalised.
	_, moved, changed, err := cniconf.Chain(name, out, "/var/run/pw.sock")
	if err != nil || !changed || strings.Count(string(moved), `"podwall"`) != 1 || !strings.Contains(string(moved), "/var/run/pw.sock") {
		t.Errorf("new socket: %v %v\n%s", changed, err, moved)
	}
	late := strings.Replace(reference, `{"type": "portmap"`, `{"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "podwall"`, 1)
	_, fixed, _, err := cniconf.Chain(name, []byte(late), "/run/podwall/agent.sock")
	if err != nil || pluginTypes(t, fixed) != "bridge,podwall,portmap" {
		t.Errorf("podwall at the end: %v\n%s", err, fixed)
	}
}

func TestChainConvertsASinglePlugin(t *testing.T) {
	conf := `{"cniVersion": "0.4.0", "name": "mynet", "type": "ptp", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}`
	for _, file := range []string{"10-mynet.conf", "10-mynet.json"} {
		name, out, changed, err := cniconf.Chain(file, []byte(conf), "/run/podwall/agent.sock")
		if err != nil || !changed || name != "10-mynet.conflist" {
			t.Fatalf("%s: %q %v %v", file, name, changed, err)
		}
		list, _ := libcni.ConfListFromBytes(out)
		if pluginTypes(t, out) != "ptp,podwall" || list.Name != "mynet" || list.CNIVersion != "0.4.0" {
			t.Errorf("%s converted to:\n%s", file, out)
		}
	}
}

func TestChainRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, file, data, reason string
	}{
		{"0.3.1", "a.conflist", strings.Replace(reference, "1.0.0", "0.3.1", 1), "prevResult"},
		{"0.3.1 single", "a.conf", `{"cniVersion":"0.3.1","name":"n","type":"bridge"}`, "below 0.4.0"},
		{"no version", "a.conflist", `{"name":"n","plugins":[{"type":"bridge"}]}`, "no cniVersion"},
		{"too new", "a.conflist", strings.Replace(reference, "1.0.0", "1.2.0", 1), "newer"},
		{"garbage", "a.conflist", `{"cniVersion": "1.0.0", "name": `, "not a JSON object"},
		{"array", "a.conflist", `[1,2]`, "not a JSON object"},
		{"no plugins", "a.conflist", `{"cniVersion":"1.0.0","name":"n","plugins":[]}`, "no plugins"},
		{"plugins missing", "a.conflist", `{"cniVersion":"1.0.0","name":"n"}`, "no plugins"},
		{"plugin without type", "a.conflist", `{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}`, "type"},
		{"podwall first", "a.conflist", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"podwall"}]}`, "no main plugin"},
		{"list in a .conf", "a.conf", reference, "rename it to .conflist"},
		{"single without type", "a.conf", `{"cniVersion":"1.0.0","name":"n"}`, "type"},
		{"duplicate key", "a.conflist", `{"cniVersion":"1.0.0","name":"n","name":"m","plugins":[{"type":"bridge"}]}`, "twice"},
		{"trailing data", "a.conflist", reference + "{}", "trailing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := cniconf.Chain(tc.file, []byte(tc.data), "/run/podwall/agent.sock")
			var refused *cniconf.RefusedError
			if !errors.As(err, &refused) || !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("err = %v, want a refusal naming %s and saying %q", err, tc.file, tc.reason)
			}
		})
	}
}

func TestOwnConflist(t *testing.T) {
	o := cniconf.OwnOptions{Network: "podwall", Bridge: "podwall0", Subnets: []string{"node"}, ServiceCIDRs: []string{"10.96.0.0/12"}}
	a, err := cniconf.OwnConflist(o)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := cniconf.OwnConflist(o)
	if string(a) != string(b) {
		t.Error("same options, different bytes")
	}
	list, _ := libcni.ConfListFromBytes(a)
	if pluginTypes(t, a) != "bridge,podwall,portmap" || list.CNIVersion != cniconf.DefaultOwnCNIVersion ||
		!strings.Contains(string(a), `"type": "podwall-ipam"`) || !strings.Contains(string(a), `"subnet": "node"`) {
		t.Errorf("own conflist:\n%s", a)
	}
	for _, bad := range []cniconf.OwnOptions{
		{Network: "a/b", Bridge: "x", Subnets: []string{"node"}},
		{Network: "n", Bridge: "a-very-long-bridge-name", Subnets: []string{"node"}},
		{Network: "n", Bridge: "x", Subnets: []string{"10.0.0.1/24"}},
		{Network: "n", Bridge: "x"},
	} {
		if _, err := cniconf.OwnConflist(bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// dirState maps every file under dir (backups included) to its digest and mode.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		state[rel] = fmt.Sprintf("%x %v", sha256.Sum256(data), info.Mode())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

func sameState(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		keys := func(m map[string]string) []string {
			var out []string
			for k := range m {
				out = append(out, k)
			}
			sort.Strings(out)
			return out
		}
		t.Errorf("%s: files %v, want %v\n%v\n%v", what, keys(got), keys(want), got, want)
	}
}

func TestDirChainIdempotentAndUninstall(t *testing.T) {
	for _, tc := range []struct{ file, data, active string }{
		{"10-containerd-net.conflist", reference, "10-containerd-net.conflist"},
		{"10-mynet.conf", `{"cniVersion":"1.0.0","name":"mynet","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`, "10-mynet.conflist"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.data), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "99-other.conflist"), []byte(reference), 0o644); err != nil {
				t.Fatal(err)
			}
			before := dirState(t, dir)
			d := cniconf.Dir{Path: dir}
			if _, err := d.Chain("/run/podwall/agent.sock", true); err != nil {
				t.Fatal(err)
			}
			sameState(t, "dry run", dirState(t, dir), before)
			if _, err := d.Chain("/run/podwall/agent.sock", false); err != nil {
				t.Fatal(err)
			}
			if active, _ := d.Active(); active != tc.active {
				t.Errorf("active = %s, want %s", active, tc.active)
			}
			installed := dirState(t, dir)
			changes, err := d.Chain("/run/podwall/agent.sock", false)
			if err != nil || len(changes) != 1 || changes[0].Action != "unchanged" {
				t.Errorf("second run: %v %v", changes, err)
			}
			sameState(t, "second run", dirState(t, dir), installed)
			if _, err := d.Uninstall(false); err != nil {
				t.Fatal(err)
			}
			sameState(t, "after uninstall", dirState(t, dir), before)
			if changes, err := d.Uninstall(false); err != nil || len(changes) != 0 {
				t.Errorf("second uninstall: %v %v", changes, err)
			}
		})
	}
}

func TestDirWriteOwn(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-containerd-net.conflist"), []byte(reference), 0o644); err != nil {
		t.Fatal(err)
	}
	before := dirState(t, dir)
	d := cniconf.Dir{Path: dir}
	own, _ := cniconf.OwnConflist(cniconf.OwnOptions{Network: "podwall", Bridge: "podwall0", Subnets: []string{"node"}})
	if _, err := d.WriteOwn("00-podwall.conflist", own, false); err != nil {
		t.Fatal(err)
	}
	if active, _ := d.Active(); active != "00-podwall.conflist" {
		t.Errorf("active = %s", active)
	}
	written := dirState(t, dir)
	if changes, err := d.WriteOwn("00-podwall.conflist", own, false); err != nil || changes[0].Action != "unchanged" {
		t.Errorf("second write: %v %v", changes, err)
	}
	sameState(t, "second write", dirState(t, dir), written)
	// Chaining after our own conflist changes nothing: podwall is in it.
	if changes, err := d.Chain(cniconf.DefaultAgentSocket, false); err != nil || changes[0].Action != "unchanged" {
		t.Errorf("chain over our own: %v %v", changes, err)
	}
	_, err := d.WriteOwn("90-podwall.conflist", own, false)
	var refused *cniconf.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "00-podwall.conflist sorts before it") {
		t.Errorf("a name that does not sort first: %v", err)
	}
	if _, err := d.Uninstall(false); err != nil {
		t.Fatal(err)
	}
	sameState(t, "after uninstall", dirState(t, dir), before)
}

func TestDirWithoutConfig(t *testing.T) {
	_, err := cniconf.Dir{Path: t.TempDir()}.Chain(cniconf.DefaultAgentSocket, false)
	if !errors.Is(err, cniconf.ErrNoConfig) {
		t.Errorf("empty dir: %v", err)
	}
}

// A runtime's CNI (say its DaemonSet) rewrites its file without podwall: the
// next install takes that as the original, which uninstall then restores.
func TestDirRewrittenFileIsTheNewOriginal(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "10-containerd-net.conflist")
	if err := os.WriteFile(file, []byte(reference), 0o644); err != nil {
		t.Fatal(err)
	}
	d := cniconf.Dir{Path: dir}
	if _, err := d.Chain(cniconf.DefaultAgentSocket, false); err != nil {
		t.Fatal(err)
	}
	rewritten := strings.Replace(reference, "10.88.0.0/16", "10.89.0.0/16", 1)
	if err := os.WriteFile(file, []byte(rewritten), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Chain(cniconf.DefaultAgentSocket, false); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Uninstall(false); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(file); string(got) != rewritten {
		t.Errorf("restored %q, want the rewritten original", got)
	}
}
