// Package harness runs podwall's integration tests on a real kernel.
//
// A test builds a simulated Kubernetes node (its own network namespace, with
// its own links, routes, iptables and ipsets), pods behind it (one network
// namespace each, with the kubelet's CNI_ARGS), and drives a conflist through
// libcni exactly as a container runtime does, executing the real plugin
// binaries inside the node namespace. Everything a test creates is torn down
// in t.Cleanup, also when the test fails or panics; namespaces left behind by
// a killed test binary are swept by the next run.
//
//	harness.CheckHostUnchanged(t)
//	node := harness.NewNode(t)
//	net := node.Network(t, harness.BridgeConflist("podnet", "cni0",
//		harness.HostLocalIPAM(node.Dir, "10.244.1.0/24")))
//	pod := node.NewPod(t, "default", "web")
//	result, err := net.Add(ctx, pod)
//
// A package using the harness should have
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
// so that a namespace left behind fails the run.
//
// Functions taking a testing.TB must be called from the test's goroutine.
// Everything else (Network.Add/Check/Del, Node.CreatePod, InvokePlugin, Do,
// Run) is safe to call from many goroutines at once.
//
// Thread and namespace rules that the helpers follow, and that code passed to
// Do must follow too:
//   - Do locks a fresh OS thread into the namespace; sockets and processes
//     created inside keep that namespace for life, so a listener opened in Do
//     can be used after Do returns.
//   - A process started inside Do (os/exec) inherits the thread's namespace.
//   - /proc/self/net and /proc/net show the main thread's namespace, not the
//     current thread's: use /proc/thread-self/net. /proc/sys/net follows the
//     current thread, so sysctls work inside Do. /sys/class/net is the host's.
//   - Do not start goroutines inside Do and expect them to be in the namespace.
package harness
