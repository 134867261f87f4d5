// Package kubelettest runs podwall on the real kubelet path: a real
// kube-apiserver, and a real kubelet on containerd and runc creating the
// pods, with podwall installed by install.sh (see test/k8s/k8senv).
package kubelettest

import (
	"testing"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
