package source

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/ruleset"
)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const multiDoc = `# frontend
apiVersion: v1
kind: Namespace
metadata:
  name: frontend
  labels: {team: web}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: frontend, labels: {app: web}}
spec:
  containers:
  - name: c
    image: x
    ports: [{name: http, containerPort: 8080}]
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: frontend}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}]
`

func TestDirReadsMultiDocumentYAML(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", multiDoc)
	write(t, dir, "b.json", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"api"}}
{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"backend"}}]}`)
	write(t, dir, "notes.txt", "not a manifest")
	write(t, dir, ".hidden.yaml", "garbage: [")
	d, err := NewDir(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	objs, _, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Problems) != 0 {
		t.Fatalf("problems: %v", objs.Problems)
	}
	if len(objs.Namespaces) != 2 || objs.Namespaces[0].Name != "frontend" || objs.Namespaces[0].Labels["team"] != "web" || objs.Namespaces[1].Name != "backend" {
		t.Errorf("namespaces: %+v", objs.Namespaces)
	}
	if len(objs.Pods) != 2 || objs.Pods[0].Name != "web" || objs.Pods[1].Namespace != "default" {
		t.Errorf("pods: %+v", objs.Pods)
	}
	if got := objs.Pods[0].Spec.Containers[0].Ports[0].Name; got != "http" {
		t.Errorf("named port %q", got)
	}
	if len(objs.Policies) != 1 || objs.Policies[0].Spec.Ingress[0].Ports[0].Port.StrVal != "http" {
		t.Errorf("policies: %+v", objs.Policies)
	}
}

func TestDirReportsAndSkipsInvalidDocuments(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mixed.yaml", `apiVersion: v1
kind: Pod
metadata: {name: good, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: Bad_Name, namespace: x}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
---
apiVersion: networking.k8s.io/v1beta1
kind: NetworkPolicy
metadata: {name: old}
---
apiVersion: v1
kind: Pod
metadata: {name: typo, namespace: x}
spec: {containerz: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: ns-y}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, excpt: [10.1.0.0/16]}}]
---
just a string
---
apiVersion: v1
kind: Pod
metadata: {name: good, namespace: x}
`)
	write(t, dir, "z.yaml", "a: [unclosed\n")
	d, err := NewDir(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	objs, _, _ := d.Snapshot()
	if len(objs.Pods) != 1 || objs.Pods[0].Name != "good" {
		t.Errorf("pods: %+v", objs.Pods)
	}
	// The policy that does not decode isolates its namespace instead of
	// vanishing.
	if len(objs.Policies) != 1 || objs.Policies[0].Name != "broken" || objs.Policies[0].Namespace != "ns-y" ||
		len(objs.Policies[0].Spec.Ingress) != 0 || len(objs.Policies[0].Spec.PolicyTypes) != 2 {
		t.Errorf("policies: %+v", objs.Policies)
	}
	want := []string{
		`mixed.yaml: document 1 (Pod x/Bad_Name): metadata.name "Bad_Name"`,
		`mixed.yaml: document 2 (Secret s): kind "Secret" is not one of`,
		`mixed.yaml: document 3 (NetworkPolicy old): apiVersion "networking.k8s.io/v1beta1", want "networking.k8s.io/v1"`,
		`mixed.yaml: document 4 (Pod x/typo): invalid Pod: json: unknown field "containerz"`,
		`mixed.yaml: document 5 (NetworkPolicy ns-y/broken): invalid NetworkPolicy, enforced as isolating every pod of namespace ns-y`,
		`mixed.yaml: document 6: not a Kubernetes object`,
		`mixed.yaml: document 7 (Pod x/good): already defined in mixed.yaml`,
		`z.yaml: document 0: not valid YAML`,
	}
	if len(objs.Problems) != len(want) {
		t.Errorf("%d problems, want %d", len(objs.Problems), len(want))
	}
	for i, p := range objs.Problems {
		t.Logf("problem: %v", p)
		if i < len(want) && !strings.HasPrefix(p.Error(), want[i]) {
			t.Errorf("problem %d:\n got %v\nwant %s…", i, p, want[i])
		}
	}
}

func TestDirResyncSeesAFileWrittenJustBefore(t *testing.T) {
	dir := t.TempDir()
	// A debounce far longer than the test: only Resync can pick the
	// change up.
	d, err := NewDir(dir, quietLog(), WithDebounce(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	for i := range 20 {
		name := filepath.Join(dir, "p.yaml")
		write(t, dir, "p.yaml", strings.Repeat("\n", i)+"apiVersion: v1\nkind: Namespace\nmetadata: {name: n-"+strconv.Itoa(i)+"}\n")
		if err := d.Resync(ctx); err != nil {
			t.Fatal(err)
		}
		objs, _, err := d.Snapshot()
		if err != nil || len(objs.Namespaces) != 1 || objs.Namespaces[0].Name != "n-"+strconv.Itoa(i) {
			t.Fatalf("after writing %s #%d: %+v, %v", name, i, objs.Namespaces, err)
		}
	}
}

func TestDirWatchSignalsChanges(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDir(dir, quietLog(), WithDebounce(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// Run reads once after setting up the watch; consume that signal.
	waitFor(t, d, func(o Objects) bool { return true })

	write(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: added}\n")
	waitFor(t, d, func(o Objects) bool { return len(o.Namespaces) == 1 })
	if err := os.Remove(filepath.Join(dir, "ns.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, func(o Objects) bool { return len(o.Namespaces) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func waitFor(t *testing.T, d *Dir, ok func(Objects) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case <-d.Changes():
			objs, _, _ := d.Snapshot()
			if ok(objs) {
				return
			}
		case <-deadline:
			objs, _, _ := d.Snapshot()
			t.Fatalf("no matching change; snapshot %+v", objs)
		}
	}
}

func TestDirUnreadableKeepsLastGoodObjects(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policies")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: kept}\n")
	d, err := NewDir(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	if err := d.Resync(context.Background()); err == nil {
		t.Fatal("Resync of a missing dir succeeded")
	}
	objs, _, err := d.Snapshot()
	if err == nil || len(objs.Namespaces) != 1 {
		t.Errorf("snapshot after failure: %+v, %v", objs.Namespaces, err)
	}
	if _, err := NewDir(dir, quietLog()); err == nil {
		t.Error("NewDir of a missing dir succeeded")
	}
}

func TestDirPollsWithoutEvents(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policies")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := NewDir(dir, quietLog(), WithPoll(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := d.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, d, func(o Objects) bool { return true })
	// Replacing the directory itself ends the inotify watch on it.
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: polled}\n")
	waitFor(t, d, func(o Objects) bool { return len(o.Namespaces) == 1 })
}

// TestDirCachedReadsMatchFreshReads changes files one at a time, across
// duplicates and invalid documents, and compares each read of a Dir that
// keeps its decoded files with a Dir that reads everything anew.
func TestDirCachedReadsMatchFreshReads(t *testing.T) {
	dir := t.TempDir()
	ns := func(name, team string) string {
		return "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + name + ", labels: {team: " + team + "}}\n---\n"
	}
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: x}\n---\n"
	broken := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: x}\nspec: {podSelector: {}, ingress: [{fromm: []}]}\n---\n"
	steps := []struct{ file, content string }{
		{"a.yaml", ns("x", "a") + pod},
		{"b.yaml", ns("x", "b") + pod + broken}, // duplicates of a.yaml's
		{"c.yaml", broken},                      // the same broken policy again
		{"a.yaml", pod},                         // b.yaml's namespace now counts
		{"a.yaml", "a: [unclosed\n"},            // a.yaml invalid: b.yaml's pod counts
		{"b.yaml", ns("x", "b2")},               // labels changed
		{"a.yaml", ""},                          // emptied
		{"d.json", `{"apiVersion":"v1","kind":"List","items":[` + `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}]}`},
	}
	cached, err := NewDir(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		write(t, dir, s.file, s.content)
		if err := cached.Resync(context.Background()); err != nil {
			t.Fatal(err)
		}
		fresh, err := NewDir(dir, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		got, _, _ := cached.Snapshot()
		want, _, _ := fresh.Snapshot()
		if !reflect.DeepEqual(summary(got), summary(want)) {
			t.Fatalf("step %d (%s): cached read differs from a fresh one:\n got %v\nwant %v", i, s.file, summary(got), summary(want))
		}
	}
}

// summary is what a snapshot says, in comparable form.
func summary(o Objects) []string {
	var out []string
	for _, n := range o.Namespaces {
		out = append(out, "ns "+n.Name+" "+n.Labels["team"])
	}
	for _, p := range o.Pods {
		out = append(out, "pod "+p.Namespace+"/"+p.Name)
	}
	for _, p := range o.Policies {
		out = append(out, "policy "+p.Namespace+"/"+p.Name+" "+strconv.Itoa(len(p.Spec.PolicyTypes)))
	}
	for _, p := range o.Problems {
		out = append(out, "problem "+p.Error())
	}
	return out
}

// The dir reports the objects that changed since the last Snapshot: all
// of them unknown at first and after a failed read, then exactly those
// whose documents changed.
func TestDirReportsWhatChanged(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policies")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pol := func(port string) string {
		return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: " + port + "}]}]}\n---\n"
	}
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: x}\n---\n"
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
	write(t, dir, "a.yaml", pol("80")+pod)
	write(t, dir, "b.yaml", ns)
	d, err := NewDir(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func(want string) {
		t.Helper()
		_, ch, err := d.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if got := describeChanges(ch); got != want {
			t.Errorf("changes %s, want %s", got, want)
		}
	}
	resync := func() {
		t.Helper()
		if err := d.Resync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	snapshot("unknown")
	snapshot("none")
	write(t, dir, "a.yaml", pol("81")+pod)
	resync()
	snapshot("policies [x/p]")
	write(t, dir, "a.yaml", pod)
	write(t, dir, "b.yaml", ns+"  labels: {team: a}\n")
	resync()
	resync() // nothing more: the changes of both reads are reported
	snapshot("namespaces [x] policies [x/p]")
	write(t, dir, "0.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: x, labels: {app: other}}\n")
	resync()
	snapshot("pods [x/web]") // 0.yaml's comes first and counts now

	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	if err := d.Resync(context.Background()); err == nil {
		t.Fatal("Resync of a missing dir succeeded")
	}
	if err := os.Rename(dir+".gone", dir); err != nil {
		t.Fatal(err)
	}
	resync()
	snapshot("unknown")
}

// describeChanges renders a change set, its names sorted.
func describeChanges(ch changes.Set) string {
	if ch.Unknown() {
		return "unknown"
	}
	var parts []string
	if names := slices.Sorted(maps.Keys(ch.Namespaces())); len(names) > 0 {
		parts = append(parts, fmt.Sprintf("namespaces %v", names))
	}
	for _, kind := range []struct {
		name string
		refs map[ruleset.Ref]struct{}
	}{{"pods", ch.Pods()}, {"policies", ch.Policies()}} {
		var refs []string
		for ref := range kind.refs {
			refs = append(refs, ref.String())
		}
		slices.Sort(refs)
		if len(refs) > 0 {
			parts = append(parts, fmt.Sprintf("%s %v", kind.name, refs))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
