// Package k8senv brings a real Kubernetes up from a Go test, and down
// again, without touching the host's network: etcd and kube-apiserver run
// in a "control" network namespace (StartControlPlane), and each node is a
// network namespace linked to it by a veth pair (ConnectNode), where a test
// runs podwall-agent, or where containerd and the real kubelet run
// (StartKubeletNode) so that the pods' bridge, veths and iptables rules
// live in that namespace too.
//
// The binaries come from bin/k8s (make k8s-tools: kube-apiserver, kubelet,
// kubectl and etcd built from Go modules, and pause.tar, the only image:
// pods run it with imagePullPolicy Never) and from the containerd and runc
// packages (make deps). The PKI is generated in Go for each test.
//
//	cp := k8senv.StartControlPlane(t)
//	node := cp.StartKubeletNode(t, k8senv.NodeOptions{Conflist: k8senv.ReferenceConflist})
//	client := cp.Clientset(t)
//	pods := k8senv.MustCreatePods(t, client, node.PausePod("default", "a", nil, 80))
//	server := node.PodNetNS(t, pods[0]) // then ServeTCP, ConnectTCP, Do
//
// Not there: controller manager, scheduler (pods set spec.nodeName),
// kube-proxy, DNS, Services. The ServiceAccount admission plugin is off, so
// namespaces need no default ServiceAccount and pods get no token.
//
// Teardown runs in t.Cleanup, also after a failure, and removes every
// process, mount, cgroup, namespace and file the cluster made; with
// harness.CheckHostUnchanged a test also proves the host's network state
// untouched. A test package using it should have
//
//	func TestMain(m *testing.M) { harness.Main(m) }
package k8senv
