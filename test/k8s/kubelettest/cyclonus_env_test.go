package kubelettest

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/k8s/k8senv"
)

// The Node's podCIDR, and the addresses podwall-ipam may hand out in it:
// blackhole routes in the node cover the rest of it, and the IPAM never
// hands out an address inside a route of the node that the pod network did
// not create. The base pods are created one at a time in
// cyclonusAddOrder, so pod cyclonusAddOrder[i] gets cyclonusPodAddrs[i].
// z/c gets 10.244.9.66: the ipBlock peers cyclonus derives from it, 10.244.9.0/24 except 10.244.9.64/28, put
// three pods outside the block, three in it and three (z/c included) in the
// except. Pods that cases create take the spares.
var (
	cyclonusPodCIDR  = netip.MustParsePrefix("10.244.8.0/23")
	cyclonusGateway  = "10.244.8.1" // the bridge's, the range's first address
	cyclonusAddOrder = []string{"x/a", "y/b", "z/b", "y/a", "x/b", "z/c", "y/c", "x/c", "z/a"}
	cyclonusPodAddrs = []string{
		"10.244.8.10", "10.244.8.20", "10.244.8.30", "10.244.9.5", "10.244.9.40",
		"10.244.9.66", "10.244.9.67", "10.244.9.70", "10.244.9.90",
		// spares, above the others
		"10.244.9.100", "10.244.9.120", "10.244.9.200", "10.244.9.220",
	}
)

const (
	// podLifecycleTimeout bounds a pod's creation to Ready, or its
	// deletion to gone, and a namespace's deletion.
	podLifecycleTimeout = time.Minute
	// podGrace is the pods' termination grace: pause exits on SIGTERM.
	podGrace = int64(1)
)

// livePod is a pod of the model that the kubelet runs and the test serves
// in.
type livePod struct {
	ns, name string
	netns    *k8senv.PodNetNS
	ip       netip.Addr
	stop     func()
}

func (p *livePod) ref() string { return p.ns + "/" + p.name }

// kubeletEnv is one mode's cluster: a control plane, a kubelet node with
// podwall installed, and the cyclonus pods, with live the model of what the
// API server holds.
type kubeletEnv struct {
	t       *testing.T // the mode's test, which owns the node and the pods
	deny    bool
	opened  bool // the running case has cyclonus.OpenPolicies
	client  kubernetes.Interface
	node    *k8senv.KubeletNode
	podwall *k8senv.Podwall
	live    *cyclonus.Cluster
	pods    map[string]*livePod // by "ns/name"
}

func newKubeletEnv(t *testing.T, mode string) *kubeletEnv {
	t.Helper()
	cp := k8senv.StartControlPlane(t)
	e := &kubeletEnv{t: t, deny: mode == "deny", client: cp.Clientset(t), pods: map[string]*livePod{}}
	e.node = cp.StartKubeletNode(t, k8senv.NodeOptions{PodCIDR: cyclonusPodCIDR.String()})
	if err := e.steerAddresses(); err != nil {
		t.Fatal(err)
	}
	e.podwall = e.node.InstallPodwall(t, k8senv.PodwallOptions{DefaultPolicy: mode})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.live = cyclonus.NewCluster()
	for _, ns := range e.live.SortedNamespaces() {
		if err := k8senv.CreateNamespace(ctx, e.client, ns, e.live.NamespaceLabels[ns]); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now()
	for i, ref := range cyclonusAddOrder {
		ns, name, _ := strings.Cut(ref, "/")
		lp, err := e.createPod(ctx, ns, name, e.live.Pod(ns, name).Labels)
		if err != nil {
			t.Fatal(err)
		}
		if got := lp.ip.String(); got != cyclonusPodAddrs[i] {
			t.Logf("pod %s got %s, not the planned %s: the ipBlock cases split the pods differently", ref, got, cyclonusPodAddrs[i])
		}
	}
	t.Logf("%s mode: %d pods created to Ready and serving, one at a time, in %v", mode, len(cyclonusAddOrder), time.Since(started).Round(time.Millisecond))
	return e
}

// steerAddresses adds the blackhole routes that leave cyclonusPodAddrs and the
// gateway as the only addresses of the podCIDR the IPAM may hand out. They sit
// in the node namespace, which goes with the node.
func (e *kubeletEnv) steerAddresses() error {
	return e.node.Node.Do(func() error {
		for _, s := range cyclonus.ExcludeAllBut(cyclonusPodCIDR, append([]string{cyclonusGateway}, cyclonusPodAddrs...)) {
			_, dst, err := net.ParseCIDR(s)
			if err != nil {
				return err
			}
			if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}); err != nil {
				return fmt.Errorf("adding blackhole route %s in the node: %w", s, err)
			}
		}
		return nil
	})
}

// apply performs one cyclonus action through the API server, and on the
// model of what it holds.
func (e *kubeletEnv) apply(ctx context.Context, a *generator.Action) error {
	var err error
	switch {
	case a.CreatePolicy != nil:
		err = e.createPolicy(ctx, a.CreatePolicy.Policy)
	case a.UpdatePolicy != nil:
		err = e.updatePolicy(ctx, a.UpdatePolicy.Policy)
	case a.DeletePolicy != nil:
		err = e.client.NetworkingV1().NetworkPolicies(a.DeletePolicy.Namespace).Delete(ctx, a.DeletePolicy.Name, metav1.DeleteOptions{})
	case a.CreateNamespace != nil:
		err = k8senv.CreateNamespace(ctx, e.client, a.CreateNamespace.Namespace, a.CreateNamespace.Labels)
	case a.SetNamespaceLabels != nil:
		err = e.setNamespaceLabels(ctx, a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels)
	case a.DeleteNamespace != nil:
		err = e.deleteNamespace(ctx, a.DeleteNamespace.Namespace)
	case a.CreatePod != nil:
		_, err = e.createPod(ctx, a.CreatePod.Namespace, a.CreatePod.Pod, a.CreatePod.Labels)
	case a.SetPodLabels != nil:
		err = e.setPodLabels(ctx, a.SetPodLabels.Namespace, a.SetPodLabels.Pod, a.SetPodLabels.Labels)
	case a.DeletePod != nil:
		err = e.deletePod(ctx, a.DeletePod.Namespace, a.DeletePod.Pod)
	default:
		err = fmt.Errorf("unsupported action %+v", a)
	}
	if err != nil {
		return err
	}
	return e.live.Apply(a)
}

// reset brings the API server to base, the cluster a case starts from:
// what the last case added is deleted, labels it changed are restored,
// policies made equal to base's.
func (e *kubeletEnv) reset(ctx context.Context, base *cyclonus.Cluster) error {
	var kept []*networkingv1.NetworkPolicy
	for _, np := range e.live.Policies {
		i := slices.IndexFunc(base.Policies, func(p *networkingv1.NetworkPolicy) bool {
			return p.Namespace == np.Namespace && p.Name == np.Name
		})
		if i >= 0 && equality.Semantic.DeepEqual(np.Spec, base.Policies[i].Spec) {
			kept = append(kept, np)
			continue
		}
		if err := e.client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}
	for _, np := range base.Policies {
		if !slices.ContainsFunc(kept, func(p *networkingv1.NetworkPolicy) bool { return p.Namespace == np.Namespace && p.Name == np.Name }) {
			if err := e.createPolicy(ctx, np); err != nil {
				return err
			}
		}
	}
	for _, p := range slices.Clone(e.live.Pods) {
		if base.Pod(p.Namespace, p.Name) == nil {
			if err := e.deletePod(ctx, p.Namespace, p.Name); err != nil {
				return err
			}
		}
	}
	for _, ns := range e.live.SortedNamespaces() {
		if _, ok := base.NamespaceLabels[ns]; !ok {
			if err := e.deleteNamespace(ctx, ns); err != nil {
				return err
			}
		}
	}
	for _, ns := range base.SortedNamespaces() {
		switch labels, ok := e.live.NamespaceLabels[ns]; {
		case !ok:
			if err := k8senv.CreateNamespace(ctx, e.client, ns, base.NamespaceLabels[ns]); err != nil {
				return err
			}
		case !maps.Equal(labels, base.NamespaceLabels[ns]):
			if err := e.setNamespaceLabels(ctx, ns, base.NamespaceLabels[ns]); err != nil {
				return err
			}
		}
	}
	for _, p := range base.Pods {
		switch lp := e.live.Pod(p.Namespace, p.Name); {
		case lp == nil:
			if _, err := e.createPod(ctx, p.Namespace, p.Name, p.Labels); err != nil {
				return err
			}
		case !maps.Equal(lp.Labels, p.Labels):
			if err := e.setPodLabels(ctx, p.Namespace, p.Name, p.Labels); err != nil {
				return err
			}
		}
	}
	e.live = base.Clone()
	return nil
}

func (e *kubeletEnv) createPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	np = np.DeepCopy()
	np.ResourceVersion = ""
	_, err := e.client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
	return err
}

func (e *kubeletEnv) updatePolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	cur, err := e.client.NetworkingV1().NetworkPolicies(np.Namespace).Get(ctx, np.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cur.Labels, cur.Annotations, cur.Spec = np.Labels, np.Annotations, *np.Spec.DeepCopy()
	_, err = e.client.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

func (e *kubeletEnv) setNamespaceLabels(ctx context.Context, name string, labels map[string]string) error {
	ns, err := e.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ns.Labels = maps.Clone(labels)
	_, err = e.client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	return err
}

func (e *kubeletEnv) setPodLabels(ctx context.Context, ns, name string, labels map[string]string) error {
	pod, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pod.Labels = maps.Clone(labels)
	_, err = e.client.CoreV1().Pods(ns).Update(ctx, pod, metav1.UpdateOptions{})
	return err
}

// createPod creates a pause pod declaring cyclonus' container ports, waits
// until it is Ready, and serves its ports from inside its namespace until
// the pod is deleted or the mode's test ends.
func (e *kubeletEnv) createPod(ctx context.Context, ns, name string, labels map[string]string) (*livePod, error) {
	ctx, cancel := context.WithTimeout(ctx, podLifecycleTimeout)
	defer cancel()
	pod := e.node.PausePod(ns, name, maps.Clone(labels))
	pod.Spec.Containers[0].Ports = cyclonus.ContainerPorts()
	pods, err := k8senv.CreatePods(ctx, e.client, pod)
	if err != nil {
		return nil, fmt.Errorf("%w\nagent log:\n%s", err, e.podwall.AgentLog(20))
	}
	ip, err := netip.ParseAddr(pods[0].Status.PodIP)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: address %q: %w", ns, name, pods[0].Status.PodIP, err)
	}
	netns, err := e.node.FindPodNetNS(pods[0])
	if err != nil {
		return nil, err
	}
	stop, err := cyclonus.Serve(netns)
	if err != nil {
		netns.Close()
		return nil, fmt.Errorf("serving in pod %s/%s: %w", ns, name, err)
	}
	lp := &livePod{ns: ns, name: name, netns: netns, ip: ip}
	lp.stop = sync.OnceFunc(func() {
		stop()
		_ = netns.Close()
	})
	// Cleanup may be called from a case's goroutine; it runs when the
	// mode's test ends, before the node's teardown.
	e.t.Cleanup(lp.stop)
	e.pods[lp.ref()] = lp
	return lp, nil
}

// deletePod deletes a pod and waits until the kubelet has stopped it (its
// CNI DEL has run) and the API server forgot it.
func (e *kubeletEnv) deletePod(ctx context.Context, ns, name string) error {
	grace := podGrace
	err := e.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, podLifecycleTimeout)
	defer cancel()
	err = waitGone(ctx, func() error {
		_, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s deleted: %w", ns, name, err)
	}
	if lp := e.pods[ns+"/"+name]; lp != nil {
		lp.stop()
		delete(e.pods, lp.ref())
	}
	return nil
}

// deleteNamespace deletes a namespace's pods and policies, then the
// namespace. With no controller manager running, nothing empties it and
// drops its "kubernetes" finalizer: the test does both, as the namespace
// controller would.
func (e *kubeletEnv) deleteNamespace(ctx context.Context, name string) error {
	for _, p := range slices.Clone(e.live.Pods) {
		if p.Namespace == name {
			if err := e.deletePod(ctx, p.Namespace, p.Name); err != nil {
				return err
			}
		}
	}
	err := e.client.NetworkingV1().NetworkPolicies(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("deleting the policies of namespace %s: %w", name, err)
	}
	if err := e.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	ns, err := e.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ns.Spec.Finalizers = nil
	if _, err := e.client.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("finalizing namespace %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, podLifecycleTimeout)
	defer cancel()
	err = waitGone(ctx, func() error {
		_, err := e.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("namespace %s deleted: %w", name, err)
	}
	return nil
}

// waitGone polls get until it reports NotFound.
func waitGone(ctx context.Context, get func() error) error {
	for {
		err := get()
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("still there: %w (last: %v)", ctx.Err(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// enforce waits until the agent enforces what the API server holds
// (podwallctl wait), then flushes the node's conntrack table so that every
// probe is judged as a new flow: a UDP probe reusing the ports of an
// earlier allowed flow would otherwise pass as established.
func (e *kubeletEnv) enforce(ctx context.Context) error {
	if err := e.podwall.Wait(ctx); err != nil {
		return fmt.Errorf("%w\nagent log:\n%s", err, e.podwall.AgentLog(20))
	}
	err := e.node.Node.Do(func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) })
	if err != nil {
		return fmt.Errorf("flushing conntrack in the node: %w", err)
	}
	return nil
}

// checkAPI fails when the API server's objects differ from the model: a
// step the test did not replay faithfully would otherwise be judged
// against the wrong oracle.
func (e *kubeletEnv) checkAPI(ctx context.Context) error {
	var problems []string
	for _, ns := range e.live.SortedNamespaces() {
		got, err := e.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !maps.Equal(got.Labels, e.live.NamespaceLabels[ns]) {
			problems = append(problems, fmt.Sprintf("namespace %s labels %v, model %v", ns, got.Labels, e.live.NamespaceLabels[ns]))
		}
	}
	pods, err := e.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(pods.Items) != len(e.live.Pods) {
		problems = append(problems, fmt.Sprintf("%d pods, model %d", len(pods.Items), len(e.live.Pods)))
	}
	for _, pod := range pods.Items {
		p := e.live.Pod(pod.Namespace, pod.Name)
		if p == nil || !maps.Equal(p.Labels, pod.Labels) || pod.Status.Phase != corev1.PodRunning {
			problems = append(problems, fmt.Sprintf("pod %s/%s (%s) labels %v, model %v", pod.Namespace, pod.Name, pod.Status.Phase, pod.Labels, p))
		}
	}
	nps, err := e.client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	want := e.live.OraclePolicies(false)
	if len(nps.Items) != len(want) {
		problems = append(problems, fmt.Sprintf("%d policies, model %d", len(nps.Items), len(want)))
	}
	for _, np := range nps.Items {
		i := slices.IndexFunc(want, func(p *networkingv1.NetworkPolicy) bool {
			return p.Namespace == np.Namespace && p.Name == np.Name
		})
		if i < 0 || !equality.Semantic.DeepEqual(np.Spec, apiDefaults(want[i]).Spec) {
			problems = append(problems, fmt.Sprintf("policy %s/%s differs from the model", np.Namespace, np.Name))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the API server differs from the model: %s", strings.Join(problems, "; "))
	}
	return nil
}

// apiDefaults returns the policy as the API server stores it: a port
// without a protocol is TCP (OraclePolicies already defaults policyTypes).
func apiDefaults(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	np = np.DeepCopy()
	tcp := corev1.ProtocolTCP
	defaultPorts := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				ports[i].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Ingress {
		defaultPorts(np.Spec.Ingress[i].Ports)
	}
	for i := range np.Spec.Egress {
		defaultPorts(np.Spec.Egress[i].Ports)
	}
	return np
}
