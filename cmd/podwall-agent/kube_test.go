package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/nodecidrs"
)

func TestKubernetesModeFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("NODE_NAME", "")
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--policy-dir", dir, "--kubeconfig", "/k", "--socket", "/x"}, "mutually exclusive"},
		{[]string{"--kubeconfig", "/k", "--socket", "/x"}, "--node-name (or $NODE_NAME) is required in Kubernetes mode"},
		{[]string{"--kubeconfig", "/k", "--node-name", "n", "--socket", "/x", "--pod-cidrs-file", ""}, "--pod-cidrs-file must not be empty"},
		{[]string{"--kubeconfig", "/k", "--node-name", "n"}, "--socket is required"},
		{[]string{"--socket", "/x"}, "--policy-dir is required"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stderr, nil)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}

	var stderr bytes.Buffer
	o, code := parseFlags([]string{"--kubeconfig", "/k", "--node-name", "n1", "--socket", "/x"}, &stderr)
	if o == nil || !o.kube || o.kubeconfig != "/k" || o.node != "n1" || o.podCIDRsFile != nodecidrs.DefaultPath {
		t.Fatalf("kubeconfig flags: %+v, %d, %s", o, code, stderr.String())
	}

	t.Setenv("NODE_NAME", "from-env")
	o, _ = parseFlags([]string{"--kubeconfig", "/k", "--socket", "/x"}, &stderr)
	if o == nil || o.node != "from-env" {
		t.Errorf("node name from $NODE_NAME: %+v", o)
	}
	// Standalone mode does not take the node's name from the environment.
	o, _ = parseFlags([]string{"--policy-dir", dir, "--socket", "/x"}, &stderr)
	if o == nil || o.kube || o.node != "" {
		t.Errorf("standalone: %+v", o)
	}

	// In a pod: in-cluster config when neither source is named.
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	o, _ = parseFlags([]string{"--socket", "/x"}, &stderr)
	if o == nil || !o.kube || o.kubeconfig != "" || o.node != "from-env" {
		t.Errorf("in-cluster: %+v", o)
	}
	o, _ = parseFlags([]string{"--policy-dir", dir, "--socket", "/x"}, &stderr)
	if o == nil || o.kube {
		t.Errorf("--policy-dir inside a pod is standalone mode: %+v", o)
	}
}

func TestKubernetesModeFailsClearlyWithoutAnAPIServerConfig(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"--kubeconfig", "/nonexistent/kubeconfig", "--node-name", "n", "--socket", t.TempDir() + "/s"}, &stderr, nil)
	if code != exitError || !strings.Contains(stderr.String(), "--kubeconfig /nonexistent/kubeconfig") {
		t.Errorf("exit %d, %s", code, stderr.String())
	}
}
