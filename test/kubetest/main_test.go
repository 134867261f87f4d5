// Package kubetest runs podwall-agent in Kubernetes mode against a real
// kube-apiserver (test/k8s/k8senv): nodes are network namespaces, each with
// its own agent binary, and pods are attached through the real CNI chain
// and registered through the API as a kubelet would.
package kubetest

import (
	"testing"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
