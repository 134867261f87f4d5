package source

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/podwall/podwall/enforcement/policy/synthetic"
)

// scaleDir writes the scale (5,000 pods over 50 namespaces, 1,000
// policies) into a temporary directory.
func scaleDir(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if err := synthetic.WriteDir(dir, 50, synthetic.Pods(5000, 50), synthetic.Policies(1000, 50)); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkDirReadUnchanged is one read of the directory at scale when no
// file changed since the last read (what `podwallctl wait` costs on an
// idle dir).
func BenchmarkDirReadUnchanged(b *testing.B) {
	d, err := NewDir(scaleDir(b), quietLog())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := d.read(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirReadOneFileChanged is one read after one small policy file
// was rewritten (the policy-change benchmark's step).
func BenchmarkDirReadOneFileChanged(b *testing.B) {
	dir := scaleDir(b)
	d, err := NewDir(dir, quietLog())
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		content := fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench-change, namespace: ns-00}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: %d}]}]\n", 7000+i%1000)
		if err := os.WriteFile(filepath.Join(dir, "change.yaml"), []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
		if err := d.read(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirFirstRead is a first read, decoding everything (an agent
// starting).
func BenchmarkDirFirstRead(b *testing.B) {
	dir := scaleDir(b)
	for b.Loop() {
		if _, err := NewDir(dir, quietLog()); err != nil {
			b.Fatal(err)
		}
	}
}
