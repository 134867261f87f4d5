package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/enforcement/policy/synthetic"
	"github.com/podwall/podwall/test/harness"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// The scale.
const (
	scalePods       = 5000
	scaleNamespaces = 50
	scalePolicies   = 1000
)

// BenchmarkKubernetesModeAtScale runs the agent in Kubernetes mode against
// an API server holding 5,000 pods (on 50 nodes, as API objects only) and
// 1,000 policies, and reports its memory, CPU and times next to the same
// agent in standalone mode on the same objects from a policy dir (the
// baseline, in the same run).
func BenchmarkKubernetesModeAtScale(b *testing.B) {
	harness.RequireRoot(b)
	cp := k8senv.StartControlPlane(b)
	cfg := cp.RESTConfig()
	cfg.QPS, cfg.Burst = 1000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	pods := synthetic.Pods(scalePods, scaleNamespaces)
	policies := synthetic.Policies(scalePolicies, scaleNamespaces)
	start := time.Now()
	populate(b, client, pods, policies)
	b.Logf("API server populated with %d pods, %d policies in %v", len(pods), len(policies), time.Since(start).Round(time.Millisecond))

	// Kubernetes mode.
	kn := harness.NewNode(b)
	link := cp.ConnectNode(b, synthetic.LocalNode, kn.NetNS())
	kube := startScaleAgent(b, kn, "--kubeconfig", link.Kubeconfig, "--node-name", synthetic.LocalNode,
		"--pod-cidrs-file", filepath.Join(kn.Dir, "node-podcidrs.json"))
	kubeReady := kube.waitReady(b)
	kubeIdle := kube.usage(b)

	// Standalone mode on the same objects.
	sn := harness.NewNode(b)
	dir := filepath.Join(sn.Dir, "policies")
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := synthetic.WriteDir(dir, scaleNamespaces, pods, policies); err != nil {
		b.Fatal(err)
	}
	standalone := startScaleAgent(b, sn, "--policy-dir", dir, "--node-name", synthetic.LocalNode)
	standaloneReady := standalone.waitReady(b)
	standaloneIdle := standalone.usage(b)

	// Policy changes: one policy's spec rewritten, then wait.
	ctx := context.Background()
	var kubeWaits, dirWaits []time.Duration
	for i := range 10 * b.N {
		np := synthetic.Policy(i, scaleNamespaces, "ns-00")
		np.Name = "bench-change"
		start := time.Now()
		if i == 0 {
			_, err = client.NetworkingV1().NetworkPolicies("ns-00").Create(ctx, np, metav1.CreateOptions{})
		} else {
			_, err = client.NetworkingV1().NetworkPolicies("ns-00").Update(ctx, np, metav1.UpdateOptions{})
		}
		if err != nil {
			b.Fatal(err)
		}
		kube.wait(b)
		kubeWaits = append(kubeWaits, time.Since(start))

		start = time.Now()
		var buf strings.Builder
		if err := appendPolicyYAML(&buf, np); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bench-change.yaml"), []byte(buf.String()), 0o600); err != nil {
			b.Fatal(err)
		}
		standalone.wait(b)
		dirWaits = append(dirWaits, time.Since(start))
	}
	kubeAfter, dirAfter := kube.usage(b), standalone.usage(b)

	kp50, kmax := percentile(kubeWaits, 50), percentile(kubeWaits, 100)
	dp50, dmax := percentile(dirWaits, 50), percentile(dirWaits, 100)
	b.Logf("start to ready: kubernetes %v, standalone %v (ratio %.2f)", kubeReady, standaloneReady, float64(kubeReady)/float64(standaloneReady))
	b.Logf("RSS when ready: kubernetes %.1f MiB, standalone %.1f MiB (ratio %.2f); peak %.1f vs %.1f MiB",
		kubeIdle.rssMiB, standaloneIdle.rssMiB, kubeIdle.rssMiB/standaloneIdle.rssMiB, kubeAfter.hwmMiB, dirAfter.hwmMiB)
	b.Logf("CPU to ready: kubernetes %.2f s, standalone %.2f s (ratio %.2f)", kubeIdle.cpu, standaloneIdle.cpu, kubeIdle.cpu/standaloneIdle.cpu)
	b.Logf("policy change to podwallctl wait returned (%d changes): kubernetes p50 %v max %v; standalone p50 %v max %v (ratio p50 %.2f)",
		len(kubeWaits), kp50, kmax, dp50, dmax, float64(kp50)/float64(dp50))
	b.Logf("CPU per policy change: kubernetes %.0f ms, standalone %.0f ms",
		1000*(kubeAfter.cpu-kubeIdle.cpu)/float64(len(kubeWaits)), 1000*(dirAfter.cpu-standaloneIdle.cpu)/float64(len(dirWaits)))
	b.ReportMetric(kubeIdle.rssMiB, "kube-rss-MiB")
	b.ReportMetric(kubeIdle.rssMiB/standaloneIdle.rssMiB, "rss-ratio")
	b.ReportMetric(float64(kp50.Milliseconds()), "kube-change-p50-ms")
	b.ReportMetric(float64(kp50)/float64(dp50), "change-p50-ratio")
}

// appendPolicyYAML writes a policy as a manifest of the policy dir.
func appendPolicyYAML(b *strings.Builder, np *networkingv1.NetworkPolicy) error {
	np = np.DeepCopy()
	np.APIVersion, np.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	var buf bytes.Buffer
	if err := synthetic.AppendYAML(&buf, np); err != nil {
		return err
	}
	b.Write(buf.Bytes())
	return nil
}

// populate creates the namespaces, the nodes, the pods (with their IPs in
// status) and the policies, many requests at a time.
func populate(b *testing.B, client kubernetes.Interface, pods []synthetic.Pod, policies []networkingv1.NetworkPolicy) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for i := range scaleNamespaces {
		ns := synthetic.Namespace(i)
		if _, err := client.CoreV1().Namespaces().Create(ctx, &ns, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: synthetic.LocalNode}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.64.0.0/24"}}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	parallel(b, len(pods), func(i int) error {
		obj := pods[i].Object(true)
		status := obj.Status
		created, err := client.CoreV1().Pods(obj.Namespace).Create(ctx, &obj, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status = status
		_, err = client.CoreV1().Pods(obj.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	parallel(b, len(policies), func(i int) error {
		_, err := client.NetworkingV1().NetworkPolicies(policies[i].Namespace).Create(ctx, &policies[i], metav1.CreateOptions{})
		return err
	})
}

func parallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// scaleAgent is an agent binary in a node namespace.
type scaleAgent struct {
	cmd     *exec.Cmd
	done    chan error
	socket  string
	log     string
	started time.Time
}

func startScaleAgent(b *testing.B, node *harness.Node, args ...string) *scaleAgent {
	b.Helper()
	a := &scaleAgent{socket: filepath.Join(node.Dir, "agent.sock"), log: filepath.Join(node.Dir, "agent.log"), done: make(chan error, 1)}
	logFile, err := os.OpenFile(a.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	args = append(args, "--socket", a.socket, "--default-policy", "deny")
	a.cmd = exec.Command(harness.PluginPath(b, "podwall-agent"), args...)
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	a.started = time.Now()
	if err := node.Start(a.cmd); err != nil {
		b.Fatal(err)
	}
	logFile.Close()
	go func() { a.done <- a.cmd.Wait() }()
	b.Cleanup(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(30 * time.Second):
		}
	})
	return a
}

func (a *scaleAgent) ctl(b *testing.B, args ...string) (string, error) {
	out, err := exec.Command(harness.PluginPath(b, "podwallctl"), append([]string{"--socket", a.socket}, args...)...).CombinedOutput()
	return string(out), err
}

// waitReady returns the time from start to the first successful wait.
func (a *scaleAgent) waitReady(b *testing.B) time.Duration {
	b.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if out, err = a.ctl(b, "wait", "--timeout", "60s"); err == nil {
			return time.Since(a.started)
		}
	}
	logData, _ := os.ReadFile(a.log)
	b.Fatalf("agent never ready: %v\n%s\n%s", err, out, logData)
	return 0
}

func (a *scaleAgent) wait(b *testing.B) {
	b.Helper()
	if out, err := a.ctl(b, "wait", "--timeout", "60s"); err != nil {
		b.Fatalf("podwallctl wait: %v\n%s", err, out)
	}
}

type usage struct {
	rssMiB, hwmMiB float64
	cpu            float64 // seconds, user + system
}

// usage reads the agent's resident memory and CPU time from /proc.
func (a *scaleAgent) usage(b *testing.B) usage {
	b.Helper()
	pid := a.cmd.Process.Pid
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			u.rssMiB = kb / 1024
		case "VmHWM:":
			u.hwmMiB = kb / 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): utime is
	// the 14th field of the line, stime the 15th.
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseFloat(rest[11], 64)
	stime, _ := strconv.ParseFloat(rest[12], 64)
	u.cpu = (utime + stime) / clockTicks
	return u
}

// clockTicks is USER_HZ, 100 on Linux everywhere.
const clockTicks = 100

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, (len(s)*p)/100)]
}
