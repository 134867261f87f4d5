package agent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/source"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

var (
	keyA = policy.ChainKey("net", "container-a", "eth0")
	keyB = policy.ChainKey("net", "container-b", "eth0")
)

func webObjects() source.Objects {
	return source.Objects{
		Pods: []corev1.Pod{
			pod("x", "a", map[string]string{"app": "web"}, "192.0.2.99"), // the manifest's IP is not the real one
			pod("x", "client", map[string]string{"app": "client"}, "10.9.0.7"),
		},
		Policies: []networkingv1.NetworkPolicy{allowFrom("x", "web", "web", "client")},
	}
}

func attachmentA() agentapi.Attachment {
	return agentapi.Attachment{Key: keyA, Network: "net", ContainerID: "container-a", IfName: "eth0",
		Namespace: "x", Name: "a", IPs: []string{"10.1.0.5"}, HostIface: "veth-a", Layout: "bridge"}
}

func TestAgentAdoptsTheKernelsAttachments(t *testing.T) {
	dp := newFakeDataplane(dataplane.Pod{Key: keyA, Network: "net", ContainerID: "container-a", IfName: "eth0",
		Namespace: "x", Name: "a", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.5")}, HostIface: "veth-a", Layout: dataplane.LayoutBridge})
	a := startAgent(t, newFakeSource(webObjects()), dp, policy.ModeDeny)

	waitUntil(t, "ready", a.Ready)
	// No Attach: the pod the kernel holds is enforced from the first apply.
	d := dp.last()
	lp := localPod(d, keyA)
	if lp == nil || len(lp.IPs) != 1 || lp.IPs[0] != netip.MustParseAddr("10.1.0.5") {
		t.Fatalf("first apply does not hold the adopted pod with its kernel IP: %+v", d.Pods)
	}
	if !allows(ingressChain(t, d, keyA)) {
		t.Errorf("the policy selecting the adopted pod is not applied: %+v", ingressChain(t, d, keyA))
	}
	if dp.count() != 1 {
		t.Errorf("%d applies at start, want 1", dp.count())
	}
	st := a.Status()
	if len(st.Pods) != 1 || !st.Pods[0].Programmed || st.Pods[0].Key != keyA || st.Generation != 1 || st.Policies != 1 {
		t.Errorf("status: %+v", st)
	}
}

func TestAttachReturnsAfterTheApplyThatIncludesThePod(t *testing.T) {
	dp := newFakeDataplane()
	a := startAgent(t, newFakeSource(webObjects()), dp, policy.ModeDeny)
	waitUntil(t, "ready", a.Ready)

	if err := a.Attach(context.Background(), attachmentA()); err != nil {
		t.Fatal(err)
	}
	d := dp.last()
	lp := localPod(d, keyA)
	if lp == nil || lp.IPs[0] != netip.MustParseAddr("10.1.0.5") {
		t.Fatalf("the apply before Attach returned lacks the pod (with the plugin's IP): %+v", d.Pods)
	}
	if !allows(ingressChain(t, d, keyA)) {
		t.Errorf("ingress chain does not hold the policy: %+v", ingressChain(t, d, keyA))
	}
	if st := a.Status(); len(st.Pods) != 1 || !st.Pods[0].Programmed {
		t.Errorf("status: %+v", st.Pods)
	}

	// A pod no manifest describes yet keeps chains that drop everything.
	b := agentapi.Attachment{Key: keyB, Namespace: "x", Name: "unknown", IPs: []string{"10.1.0.6"}, Layout: "routed", HostIface: "vethb"}
	if err := a.Attach(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	d = dp.last()
	if localPod(d, keyB) == nil || ingressChain(t, d, keyB) == nil || allows(ingressChain(t, d, keyB)) {
		t.Errorf("pod without object: %+v", ingressChain(t, d, keyB))
	}

	if err := a.Detach(context.Background(), keyB); err != nil {
		t.Fatal(err)
	}
	if d := dp.last(); localPod(d, keyB) != nil || localPod(d, keyA) == nil {
		t.Errorf("after detach: %+v", d.Pods)
	}
	if st := a.Status(); len(st.Pods) != 1 {
		t.Errorf("status after detach: %+v", st.Pods)
	}
}

func TestAttachRejectsInvalidAttachments(t *testing.T) {
	a := startAgent(t, newFakeSource(source.Objects{}), newFakeDataplane(), policy.ModeDeny)
	for _, att := range []agentapi.Attachment{
		{Key: "", Name: "a"},
		{Key: "has-dash", Name: "a"},
		{Key: keyA, Name: "a", IPs: []string{"10.0.0.300"}},
		{Key: keyA, Name: "a", Layout: "overlay"},
	} {
		err := a.Attach(context.Background(), att)
		if _, ok := err.(*RequestError); !ok {
			t.Errorf("Attach(%+v) = %v, want a RequestError", att, err)
		}
	}
}

func TestSourceChangeIsApplied(t *testing.T) {
	dp := newFakeDataplane()
	src := newFakeSource(source.Objects{Pods: webObjects().Pods})
	a := startAgent(t, src, dp, policy.ModeDeny)
	if err := a.Attach(context.Background(), attachmentA()); err != nil {
		t.Fatal(err)
	}
	if allows(ingressChain(t, dp.last(), keyA)) {
		t.Fatal("allowed before any policy")
	}
	gen := a.Status().Generation
	src.set(webObjects())
	waitUntil(t, "the new policy is applied", func() bool { return allows(ingressChain(t, dp.last(), keyA)) })
	waitUntil(t, "status follows", func() bool { return a.Status().Generation > gen && a.Status().Policies == 1 })
}

func TestPolicyFileChangeIsEnforcedBySync(t *testing.T) {
	dir := t.TempDir()
	writeManifest(t, dir, "pods.yaml", `apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
status: {podIPs: [{ip: 10.9.0.7}]}
`)
	// A debounce longer than the test: only Sync can make the agent see
	// the new file.
	src, err := source.NewDir(dir, testLog(t), source.WithDebounce(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dp := newFakeDataplane()
	a := startAgent(t, src, dp, policy.ModeDeny)
	if err := a.Attach(context.Background(), attachmentA()); err != nil {
		t.Fatal(err)
	}
	if allows(ingressChain(t, dp.last(), keyA)) {
		t.Fatal("allowed before any policy")
	}

	writeManifest(t, dir, "policy.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]
`)
	st, err := a.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !allows(ingressChain(t, dp.last(), keyA)) {
		t.Errorf("Sync returned before the new policy was applied")
	}
	if st.Policies != 2 || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "NetworkPolicy x/bad: invalid") {
		t.Errorf("status: policies %d, problems %q", st.Policies, st.Problems)
	}

	writeManifest(t, dir, "broken.yaml", "kind: Pod\napiVersion: v1\nmetadata: {name: z}\nspec: {nodeName: [1]}\n")
	st, err = a.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !hasProblem(st, "broken.yaml: document 0 (Pod z): invalid Pod") || !allows(ingressChain(t, dp.last(), keyA)) {
		t.Errorf("an invalid manifest must be reported and the rest kept: %q", st.Problems)
	}

	if err := os.Remove(filepath.Join(dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if allows(ingressChain(t, dp.last(), keyA)) {
		t.Errorf("deleted policy still applied")
	}
}

func hasProblem(st agentapi.Status, prefix string) bool {
	for _, p := range st.Problems {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

func writeManifest(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFailingApplyIsReportedAndRetried(t *testing.T) {
	dp := newFakeDataplane()
	dp.setApplyErr(errKernel)
	a := startAgent(t, newFakeSource(webObjects()), dp, policy.ModeDeny)

	err := a.Attach(context.Background(), attachmentA())
	if err == nil || !strings.Contains(err.Error(), errKernel.Error()) {
		t.Fatalf("Attach with a failing dataplane = %v", err)
	}
	st := a.Status()
	if st.Ready || !strings.Contains(st.LastError, "applying policy: "+errKernel.Error()) {
		t.Errorf("status: %+v", st)
	}
	if len(st.Pods) != 1 || st.Pods[0].Programmed {
		t.Errorf("pods: %+v", st.Pods)
	}
	if _, err := a.Sync(context.Background()); err == nil {
		t.Error("Sync succeeded with a failing dataplane")
	}

	// Without any request, the backoff retries until the kernel accepts.
	dp.setApplyErr(nil)
	waitUntil(t, "retried apply succeeds", a.Ready)
	st = a.Status()
	if st.LastError != "" || !st.Pods[0].Programmed || localPod(dp.last(), keyA) == nil {
		t.Errorf("status after recovery: %+v", st)
	}

	// A later failure keeps the agent ready (the kernel holds the last
	// good state, which is never opened) but is reported.
	dp.setApplyErr(errKernel)
	if _, err := a.Sync(context.Background()); err == nil {
		t.Error("Sync succeeded with a failing dataplane")
	}
	if st := a.Status(); !st.Ready || st.LastError == "" {
		t.Errorf("status after a later failure: %+v", st)
	}
}

func TestProbeFailureKeepsTheAgentUnready(t *testing.T) {
	dp := newFakeDataplane()
	dp.probeErr = errKernel
	a := startAgent(t, newFakeSource(webObjects()), dp, policy.ModeDeny)
	waitUntil(t, "the error is reported", func() bool { return strings.Contains(a.Status().LastError, "cannot be enforced") })
	if a.Ready() || dp.count() != 0 {
		t.Errorf("applied despite a failing probe")
	}
}

func TestSeveralAttachmentsOfOnePod(t *testing.T) {
	dp := newFakeDataplane()
	a := startAgent(t, newFakeSource(webObjects()), dp, policy.ModeDeny)
	old := attachmentA()
	if err := a.Attach(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	newer := attachmentA()
	newer.Key, newer.ContainerID, newer.IPs = keyB, "container-b", []string{"10.1.0.8"}
	if err := a.Attach(context.Background(), newer); err != nil {
		t.Fatal(err)
	}
	d := dp.last()
	if !allows(ingressChain(t, d, keyB)) || allows(ingressChain(t, d, keyA)) {
		t.Errorf("the newest attachment must get the policy and the other drop all")
	}
	if st := a.Status(); !hasProblem(st, "pod x/a has 2 attachments") {
		t.Errorf("problems: %q", st.Problems)
	}
}

func TestKernelRefreshForgetsPodsRemovedBehindTheAgentsBack(t *testing.T) {
	dp := newFakeDataplane()
	a, err := New(Config{Source: newFakeSource(webObjects()), Dataplane: dp, Mode: policy.ModeKubernetes, KernelRefresh: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	att := attachmentA()
	dp.mu.Lock()
	dp.pods = []dataplane.Pod{{Key: keyA, Namespace: "x", Name: "a", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.5")}}}
	dp.mu.Unlock()
	if err := a.Attach(ctx, att); err != nil {
		t.Fatal(err)
	}
	// The plugin's DEL removed the chains but its detach never arrived.
	dp.mu.Lock()
	dp.pods = nil
	dp.mu.Unlock()
	waitUntil(t, "the pod is forgotten", func() bool {
		d := dp.last()
		return len(a.Status().Pods) == 0 && localPod(d, keyA) == nil
	})
}

func TestStoppedAgentRefusesRequests(t *testing.T) {
	a, err := New(Config{Source: newFakeSource(source.Objects{}), Dataplane: newFakeDataplane(), Mode: policy.ModeDeny})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	cancel()
	<-done
	if _, err := a.Sync(context.Background()); err != ErrStopped {
		t.Errorf("Sync on a stopped agent = %v", err)
	}
}

func TestNothingIsAppliedBeforeTheSourceIsSynced(t *testing.T) {
	dp := newFakeDataplane()
	src := newFakeSource(source.Objects{})
	src.err = source.ErrNotSynced
	a := startAgent(t, src, dp, policy.ModeDeny)
	waitUntil(t, "the wait is reported", func() bool { return strings.Contains(a.Status().LastError, "not been read") })
	if dp.count() != 0 || a.Ready() {
		t.Fatal("applied a source that is not synced")
	}
	src.mu.Lock()
	src.err = nil
	src.mu.Unlock()
	src.set(webObjects())
	waitUntil(t, "ready once synced", a.Ready)
}
