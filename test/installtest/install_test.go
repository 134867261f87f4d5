package installtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Chaining into the reference conflist: binaries copied, podwall right after
// bridge, the original kept; a second run changes nothing, byte for byte and
// inode for inode. (Uninstall is in kernel_test.go: it runs in a node.)
func TestChainIntoReferenceConflist(t *testing.T) {
	s := newScratch(t, "")
	s.reference(t, "10-containerd-net.conflist", "10.88.0.0/16")
	s.writeConf(t, "99-loopback.conf", `{"cniVersion":"1.0.0","name":"lo","type":"loopback"}`)
	original, err := os.ReadFile(filepath.Join(s.confDir, "10-containerd-net.conflist"))
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, nil, s.args()...)
	if r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	for _, bin := range []string{"podwall", "podwall-ipam"} {
		want, _ := os.ReadFile(filepath.Join(s.srcDir, bin))
		got, err := os.ReadFile(filepath.Join(s.binDir, bin))
		info, _ := os.Stat(filepath.Join(s.binDir, bin))
		if err != nil || !bytes.Equal(got, want) || info.Mode().Perm() != 0o755 {
			t.Errorf("%s not copied whole with mode 0755: %v", bin, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.binDir, "podwallctl")); err == nil {
		t.Error("podwallctl copied into the CNI bin dir without --ctl-dir")
	}
	file, list := activeConflist(t, s.confDir)
	if filepath.Base(file) != "10-containerd-net.conflist" || pluginTypes(list) != "bridge,podwall,portmap" || list.CNIVersion != "1.0.0" {
		t.Errorf("active %s: plugins %s, version %s", file, pluginTypes(list), list.CNIVersion)
	}
	if !strings.Contains(string(list.Plugins[1].Bytes), filepath.Join(s.runDir, "agent.sock")) {
		t.Errorf("podwall entry %s does not name the agent socket", list.Plugins[1].Bytes)
	}
	if backup, err := os.ReadFile(filepath.Join(s.confDir, ".podwall-backup", "10-containerd-net.conflist")); err != nil || !bytes.Equal(backup, original) {
		t.Errorf("backup differs from the original: %v", err)
	}

	installed := tree(t, true, s.binDir, s.confDir)
	r = run(t, nil, s.args()...)
	if r.code != 0 || strings.Contains(r.stdout, "wrote") {
		t.Errorf("second install: %v", r)
	}
	sameTree(t, "after a second install", tree(t, true, s.binDir, s.confDir), installed)
}

// A single-plugin .conf is converted into a .conflist of the same effect,
// and the .conf moved away, so that the runtime picks the chained one.
func TestChainConvertsConf(t *testing.T) {
	s := newScratch(t, "")
	s.writeConf(t, "10-mynet.conf", `{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`)
	if r := run(t, nil, s.args()...); r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	file, list := activeConflist(t, s.confDir)
	if filepath.Base(file) != "10-mynet.conflist" || pluginTypes(list) != "bridge,podwall" || list.Name != "mynet" {
		t.Errorf("active %s: %s %s", file, list.Name, pluginTypes(list))
	}
	if _, err := os.Stat(filepath.Join(s.confDir, "10-mynet.conf")); err == nil {
		t.Error("the .conf was left in place: it sorts before the .conflist")
	}
}

// Refused configurations: a clear message, a documented exit status, and
// nothing changed: not the config, and no binary copied either.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, file, content string
		code                int
		says                []string
	}{
		{"cniVersion 0.3.1", "10-old.conflist", `{"cniVersion":"0.3.1","name":"old","plugins":[{"type":"bridge"},{"type":"portmap"}]}`, 3,
			[]string{"10-old.conflist", "0.3.1", "below 0.4.0", "prevResult"}},
		{"garbage", "10-garbage.conflist", `{"cniVersion": "1.0.0", "plugins": [`, 3, []string{"10-garbage.conflist", "not a JSON object"}},
		{"no plugins", "10-empty.conflist", `{"cniVersion":"1.0.0","name":"empty","plugins":[]}`, 3, []string{"10-empty.conflist", "no plugins"}},
		{"no config at all", "", "", 4, []string{"no network configuration", "--write-conflist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScratch(t, "")
			if tc.file != "" {
				s.writeConf(t, tc.file, tc.content)
			}
			// A later, valid file must not be chained instead: the runtime
			// uses the first.
			s.reference(t, "20-valid.conflist", "10.88.0.0/16")
			if tc.file == "" {
				os.Remove(filepath.Join(s.confDir, "20-valid.conflist"))
			}
			before := tree(t, true, s.binDir, s.confDir)
			r := run(t, nil, s.args()...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d\n%v", r.code, tc.code, r)
			}
			for _, say := range tc.says {
				if !strings.Contains(r.stderr, say) {
					t.Errorf("stderr does not say %q:\n%s", say, r.stderr)
				}
			}
			sameTree(t, "after a refusal", tree(t, true, s.binDir, s.confDir), before)
		})
	}
	s := newScratch(t, "")
	s.reference(t, "10-containerd-net.conflist", "10.88.0.0/16")
	if r := run(t, nil, append(s.args(), "--bogus")...); r.code != 2 || !strings.Contains(r.stderr, "--bogus") {
		t.Errorf("unknown flag: %v", r)
	}
	empty := t.TempDir()
	if r := run(t, nil, append(s.args(), "--src-dir", empty)...); r.code != 5 || !strings.Contains(r.stderr, empty) {
		t.Errorf("missing binaries: %v", r)
	}
}

// The binaries are replaced by rename: a reader running meanwhile (the
// runtime executing the plugin) sees the old file or the new one whole,
// never a part, and no temporary file is left behind.
func TestAtomicCopy(t *testing.T) {
	s := newScratch(t, "")
	s.reference(t, "10-containerd-net.conflist", "10.88.0.0/16")
	// Two source dirs with different binaries: installs alternate.
	alt := filepath.Join(s.dir, "alt-src")
	if err := os.MkdirAll(alt, 0o755); err != nil {
		t.Fatal(err)
	}
	versions := map[string]bool{}
	for _, bin := range []string{"podwall", "podwall-ipam", "podwallctl"} {
		data, err := os.ReadFile(filepath.Join(s.srcDir, bin))
		if err != nil {
			t.Fatal(err)
		}
		if bin == "podwall" {
			versions[string(data)] = true
			data = append(data, []byte("\x00 a different build")...)
			versions[string(data)] = true
		}
		if err := os.WriteFile(filepath.Join(alt, bin), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if r := run(t, nil, s.args()...); r.code != 0 {
		t.Fatalf("install: %v", r)
	}
	var (
		stop  atomic.Bool
		reads atomic.Int64
		wg    sync.WaitGroup
		torn  atomic.Value
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			data, err := os.ReadFile(filepath.Join(s.binDir, "podwall"))
			if err != nil {
				torn.Store("missing: " + err.Error())
				return
			}
			if !versions[string(data)] {
				torn.Store(fmt.Sprintf("a file of %d bytes, neither version", len(data)))
				return
			}
			reads.Add(1)
		}
	}()
	for i := range 20 {
		src := s.srcDir
		if i%2 == 0 {
			src = alt
		}
		if r := run(t, nil, append(s.args(), "--src-dir", src)...); r.code != 0 {
			t.Fatalf("install %d: %v", i, r)
		}
	}
	stop.Store(true)
	wg.Wait()
	if v := torn.Load(); v != nil {
		t.Errorf("a reader saw %v", v)
	}
	t.Logf("%d whole reads during 20 installs", reads.Load())
	entries, _ := os.ReadDir(s.binDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

// install.sh and the project's other scripts pass shellcheck. Outside CI a
// machine without shellcheck skips the lint; CI installs it (make deps).
func TestShellcheck(t *testing.T) {
	path, err := exec.LookPath("shellcheck")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("shellcheck not installed: make deps installs it")
		}
		t.Skip("shellcheck not installed")
	}
	root := filepath.Dir(installScript(t))
	scripts, err := filepath.Glob(filepath.Join(root, "scripts", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	scripts = append(scripts, installScript(t), filepath.Join(root, ".ci", "run"))
	out, err := exec.Command(path, scripts...).CombinedOutput()
	if err != nil {
		t.Errorf("shellcheck %v: %v\n%s", scripts, err, out)
	}
	if r := run(t, nil, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Exit status:") {
		t.Errorf("--help: %v", r)
	}
}
