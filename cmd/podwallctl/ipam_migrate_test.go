package main

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podwall/podwall/ipam/migrate/migratetest"
)

const migrateConflist = `{"cniVersion": "1.0.0", "name": "podnet", "plugins": [
 {"type": "bridge", "bridge": "cni1", "ipam": {"type": "podwall-ipam",
  "ranges": [{"subnet": "10.244.1.0/24", "draining": true}, {"subnet": "100.64.1.0/24"}],
  "dataDir": "/nonexistent/podwall-ipam"}}]}`

var testDraining = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}

func TestIPAMMigrateUsageErrors(t *testing.T) {
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "net.conflist"), migrateConflist)
	bad := writeFile(t, filepath.Join(dir, "bad.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge", "ipam": {"type": "podwall-ipam", "ranges": [{"subnet": "10.0.0.0/33"}]}}]}`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--config or --data-dir is required"},
		{[]string{"--config", conf, "--data-dir", dir}, "mutually exclusive"},
		{[]string{"--config", conf, "--max-unavailable", "0"}, "--max-unavailable must be at least 1, not 0"},
		{[]string{"--config", conf, "--timeout", "-1s"}, "--timeout must be positive"},
		{[]string{"--config", conf, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--config", bad}, "10.0.0.0/33"},
		{[]string{"--config", filepath.Join(dir, "missing")}, "reading configuration"},
	} {
		r := runWithRoutes(nil, append([]string{"ipam", "migrate"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("migrate %q: exit %d, stderr %q; want exit %d and %q", tc.args, r.code, r.stderr, exitUsage, tc.want)
		}
	}
}

// TestIPAMMigrateNoDraining: nothing to do is said, and the API server is
// not even needed.
func TestIPAMMigrateNoDraining(t *testing.T) {
	conf := writeFile(t, filepath.Join(t.TempDir(), "net.conflist"), strings.Replace(migrateConflist, `"draining": true`, `"draining": false`, 1))
	r := runWithRoutes(nil, "ipam", "migrate", "--config", conf, "--kubeconfig", "/nonexistent", "--evict")
	if r.code != exitOK || !strings.Contains(r.stdout, "no draining range in "+conf+": nothing to migrate") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestIPAMMigrateBadKubeconfig(t *testing.T) {
	conf := writeFile(t, filepath.Join(t.TempDir(), "net.conflist"), migrateConflist)
	r := runWithRoutes(nil, "ipam", "migrate", "--config", conf, "--node-name", "n", "--kubeconfig", "/nonexistent/kubeconfig")
	if r.code != exitFailed || !strings.Contains(r.stderr, "/nonexistent/kubeconfig") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// runMigrate runs the migration against client as the command does after
// reading the configuration.
func runMigrate(t *testing.T, client *fake.Clientset, o migrateOptions) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr}
	if o.node == "" {
		o.node = "node-a"
	}
	if o.maxUnavailable == 0 {
		o.maxUnavailable = 1
	}
	if o.timeout == 0 {
		o.timeout = 10 * time.Second
	}
	o.firstBackoff, o.pollInterval = 5*time.Millisecond, 2*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := a.migrate(ctx, client, o, testDraining)
	return result{code, stdout.String(), stderr.String()}
}

// TestIPAMMigrateSelection: only this node's pods with an address in a
// draining range, sorted; host-network, finished and other nodes' pods
// never; the dry run evicts nothing.
func TestIPAMMigrateSelection(t *testing.T) {
	hostNet := migratetest.Pod("node-a", "kube-system", "hostnet", "10.244.1.77")
	hostNet.Spec.HostNetwork = true
	finished := migratetest.Pod("node-a", "default", "job", "10.244.1.8")
	finished.Status.Phase = corev1.PodSucceeded
	bare := migratetest.Pod("node-a", "default", "bare", "10.244.1.9")
	bare.OwnerReferences = nil
	mirror := migratetest.Pod("node-a", "kube-system", "static", "10.244.1.10")
	mirror.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"}
	client := migratetest.Cluster(
		migratetest.Pod("node-a", "web", "b", "10.244.1.5"),
		migratetest.Pod("node-a", "web", "a", "100.64.1.4", "10.244.1.6"),
		migratetest.Pod("node-a", "web", "new", "100.64.1.5"),
		migratetest.Pod("node-b", "web", "elsewhere", "10.244.1.7"),
		migratetest.Pod("node-a", "web", "pending"),
		hostNet, finished, bare, mirror,
	)
	k := migratetest.NewKubelet(t, client)
	r := runMigrate(t, client, migrateOptions{})
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
	var got []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && strings.Contains(f[0], "/") {
			got = append(got, f[0]+" "+f[1])
		}
	}
	want := []string{"default/bare 10.244.1.9", "kube-system/static 10.244.1.10", "web/a 10.244.1.6", "web/b 10.244.1.5"}
	if !slices.Equal(got, want) {
		t.Errorf("listed %q, want %q; stdout:\n%s", got, want, r.stdout)
	}
	for _, s := range []string{"draining ranges: 10.244.1.0/24", "node node-a: 4 pods", "evicted only with --force", "mirror of a static pod", "dry run: pass --evict"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
	if ev := k.Evictions(); len(ev) != 0 {
		t.Errorf("dry run evicted %q", ev)
	}
}

// TestIPAMMigrateDataDir: the draining ranges come from each network's
// config.json; a network without one yet is only warned about.
func TestIPAMMigrateDataDir(t *testing.T) {
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr}
	dataDir := migratedDataDir(t)
	draining, source, code := a.drainingRanges(migrateOptions{dataDir: dataDir})
	if code != exitOK || source != dataDir || !slices.Equal(draining, testDraining) {
		t.Fatalf("draining %v from %s, exit %d, stderr %s", draining, source, code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "network other: no config.json yet") {
		t.Errorf("stderr: %s", stderr.String())
	}
	r := runWithRoutes(nil, "ipam", "migrate", "--data-dir", filepath.Join(t.TempDir(), "missing"))
	if r.code != exitUsage || !strings.Contains(r.stderr, "data dir") {
		t.Errorf("missing data dir: exit %d, stderr %s", r.code, r.stderr)
	}
}

// TestIPAMMigrateSummary: the progress, then how many pods moved; the pods
// that did not, with why, on stderr and exit 1.
func TestIPAMMigrateSummary(t *testing.T) {
	client := migratetest.Cluster(migratetest.Pod("node-a", "web", "a", "10.244.1.5"), migratetest.Pod("node-a", "db", "z", "10.244.1.7"))
	k := migratetest.NewKubelet(t, client)
	r := runMigrate(t, client, migrateOptions{evict: true})
	if r.code != exitOK || !strings.Contains(r.stdout, "web/a: evicted, waiting for it to be gone") || !strings.Contains(r.stdout, "2 of 2 pods moved off the draining ranges") {
		t.Fatalf("exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
	client = migratetest.Cluster(migratetest.Pod("node-a", "web", "a", "10.244.1.5"), migratetest.Pod("node-a", "db", "z", "10.244.1.7"))
	k = migratetest.NewKubelet(t, client)
	k.Refuse["db/z"] = -1
	r = runMigrate(t, client, migrateOptions{evict: true, timeout: 200 * time.Millisecond})
	if r.code != exitFailed || !strings.Contains(r.stdout, "1 of 2 pods moved off") {
		t.Fatalf("exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "1 pods could not be evicted") || !strings.Contains(r.stderr, "db/z: eviction refused") || !strings.Contains(r.stderr, "disruption budget") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}
