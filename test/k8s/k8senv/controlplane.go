package k8senv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podwall/podwall/test/harness"
)

// Addresses inside the namespaces a test creates; nothing of them exists in
// the host namespace.
const (
	// APIServerIP is the API server's address, on lo of the control
	// namespace and routed to from every connected node namespace.
	APIServerIP   = "10.199.255.1"
	apiServerPort = 6443
	// ServiceCIDR is the cluster's service range (no kube-proxy runs; it
	// only matters to the IPAM's non-overlap rules).
	ServiceCIDR = "10.96.0.0/16"
	etcdURL     = "http://127.0.0.1:2379"
	etcdPeerURL = "http://127.0.0.1:2380"
	// startTimeout bounds each component's start; the API server takes a
	// few seconds on two busy cores.
	startTimeout = 2 * time.Minute
)

// ControlPlane is etcd and kube-apiserver running as children of the test
// inside a network namespace of their own ("control"). The test reaches the
// API server through clients whose sockets are created inside that
// namespace (RESTConfig, Clientset), so the host needs no route; node
// namespaces get a veth link to it with ConnectNode.
//
//	cp := k8senv.StartControlPlane(t)
//	client := cp.Clientset(t)
//	link := cp.ConnectNode(t, "node-a", node.NetNS()) // node: a harness.Node
//	// run "podwall-agent --kubeconfig "+link.Kubeconfig+" ..." with node.Start
//
// There is no controller manager and no scheduler: pods must set
// spec.nodeName, and namespaces need no default ServiceAccount because the
// ServiceAccount admission plugin is off (pods get no token volume).
type ControlPlane struct {
	// Dir holds the PKI, etcd's data and the components' logs; the logs'
	// tails are printed when the test fails.
	Dir string
	// AdminKubeconfig is a kubeconfig file with cluster-admin rights, valid
	// inside the control namespace and every connected node namespace.
	AdminKubeconfig string

	tools   Tools
	control *harness.Node
	ca      *keyPair
	admin   *keyPair
	apiArgs []string

	mu        sync.Mutex
	procs     processGroup
	etcd      *process
	apiserver *process
	links     int // node links made so far, for their subnets
	// agentToken is the agent ServiceAccount's token, once requested.
	agentToken string
}

// StartControlPlane starts etcd and kube-apiserver in a new namespace and
// waits until the API server is ready. Everything is stopped and removed
// when the test ends, also when this fails halfway.
func StartControlPlane(t testing.TB) *ControlPlane {
	t.Helper()
	started := time.Now()
	control := harness.NewNode(t)
	cp := &ControlPlane{Dir: t.TempDir(), tools: FindTools(t, false), control: control}
	t.Cleanup(func() {
		if t.Failed() {
			cp.logTails(t)
		}
		if err := cp.procs.stopAll(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	if err := cp.start(); err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Logf("control plane ready in %v (namespace %s, logs in %s)", time.Since(started).Round(time.Millisecond), control.Path(), cp.Dir)
	return cp
}

func (cp *ControlPlane) start() error {
	if _, err := cp.control.Run("ip", "addr", "add", APIServerIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	if err := cp.writePKI(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := cp.startEtcd(ctx); err != nil {
		return err
	}
	return cp.StartAPIServer(ctx)
}

// writePKI creates the CA and every certificate the control plane and the
// nodes' components use, and the admin kubeconfig.
func (cp *ControlPlane) writePKI() error {
	pki := filepath.Join(cp.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("creating pki dir: %w", err)
	}
	var err error
	if cp.ca, err = newCA("podwall-test-ca"); err != nil {
		return err
	}
	caPath, _, err := cp.ca.write(pki, "ca")
	if err != nil {
		return err
	}
	serving, err := cp.ca.issue(certSpec{
		commonName: "kube-apiserver",
		server:     true,
		ips:        []net.IP{net.ParseIP(APIServerIP), net.ParseIP("127.0.0.1"), serviceAPIServerIP()},
		dnsNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return err
	}
	servingCert, servingKey, err := serving.write(pki, "apiserver")
	if err != nil {
		return err
	}
	// The API server's client identity towards kubelets (logs, exec).
	kubeletClient, err := cp.ca.issue(certSpec{commonName: "kube-apiserver-kubelet-client", groups: []string{"system:masters"}})
	if err != nil {
		return err
	}
	kubeletClientCert, kubeletClientKey, err := kubeletClient.write(pki, "apiserver-kubelet-client")
	if err != nil {
		return err
	}
	if cp.admin, err = cp.ca.issue(certSpec{commonName: "podwall-test-admin", groups: []string{"system:masters"}}); err != nil {
		return err
	}
	saKey, err := newSigningKey()
	if err != nil {
		return err
	}
	saKeyPath := filepath.Join(pki, "service-account.key")
	if err := os.WriteFile(saKeyPath, saKey, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", saKeyPath, err)
	}
	cp.AdminKubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
	if err := writeKubeconfig(cp.AdminKubeconfig, cp.serverURL(), cp.ca.CertPEM, cp.adminCredentials()); err != nil {
		return err
	}

	cp.apiArgs = []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "0.0.0.0", "--secure-port", strconv.Itoa(apiServerPort),
		"--advertise-address", APIServerIP,
		"--tls-cert-file", servingCert, "--tls-private-key-file", servingKey,
		"--client-ca-file", caPath,
		"--kubelet-client-certificate", kubeletClientCert, "--kubelet-client-key", kubeletClientKey,
		"--kubelet-certificate-authority", caPath, "--kubelet-preferred-address-types", "InternalIP",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saKeyPath, "--service-account-signing-key-file", saKeyPath,
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		// With no controller manager nobody creates each namespace's
		// default ServiceAccount, which this plugin would require of pods.
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		"--endpoint-reconciler-type", "none",
		"--profiling=false",
		// A graceful stop otherwise waits up to the request timeout (60s)
		// for open watches, such as the agents' informers.
		"--shutdown-send-retry-after=true",
		"--cert-dir", filepath.Join(cp.Dir, "apiserver-certs"),
		"--v", "1",
	}
	return nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context) error {
	p, err := startProcess(cp.control.NetNS(), cp.Dir, "etcd", cp.tools.Etcd,
		"--name", "podwall-test", "--data-dir", filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", etcdPeerURL, "--initial-advertise-peer-urls", etcdPeerURL,
		"--initial-cluster", "podwall-test="+etcdPeerURL,
		// The data dies with the test: durability only costs time on CI.
		"--unsafe-no-fsync",
	)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.etcd = p
	cp.mu.Unlock()
	cp.procs.add(p)
	client := &http.Client{Transport: &http.Transport{DialContext: cp.DialContext}, Timeout: 5 * time.Second}
	return cp.waitFor(ctx, "etcd /health", func() error {
		resp, err := client.Get(etcdURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) and
// waits until /readyz answers ok.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	if cp.apiserver != nil {
		if gone, _ := cp.apiserver.exited(); !gone {
			cp.mu.Unlock()
			return errors.New("kube-apiserver is already running")
		}
	}
	cp.mu.Unlock()
	p, err := startProcess(cp.control.NetNS(), cp.Dir, "kube-apiserver", cp.tools.KubeAPIServer, cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.apiserver = p
	cp.mu.Unlock()
	cp.procs.add(p)
	clientset, err := kubernetes.NewForConfig(cp.restConfigFor(rest.Config{Timeout: 5 * time.Second}))
	if err != nil {
		return fmt.Errorf("building readiness client: %w", err)
	}
	client := clientset.Discovery().RESTClient()
	return cp.waitFor(ctx, "kube-apiserver /readyz", func() error {
		body, err := client.Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	})
}

// StopAPIServer stops kube-apiserver (SIGTERM, a graceful shutdown) and
// leaves etcd running, for tests of what clients do while it is away.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	p := cp.apiserver
	cp.mu.Unlock()
	if p == nil {
		return errors.New("kube-apiserver was never started")
	}
	err := p.stop()
	cp.procs.remove(p)
	return err
}

// RESTConfig returns a cluster-admin client configuration whose
// connections are made inside the control namespace.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return cp.restConfigFor(rest.Config{QPS: 200, Burst: 400})
}

// Clientset returns a cluster-admin client (see RESTConfig).
func (cp *ControlPlane) Clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatalf("building clientset: %v", err)
	}
	return client
}

// DialContext opens a connection from inside the control namespace: a
// socket keeps the namespace it was created in, so the connection can then
// be used from any goroutine.
func (cp *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := cp.control.Do(func() error {
		var dialer net.Dialer
		var err error
		conn, err = dialer.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// NetNSPath returns the control namespace's path, for `ip netns exec`
// while debugging.
func (cp *ControlPlane) NetNSPath() string { return cp.control.Path() }

// Kubectl runs kubectl with the admin kubeconfig inside the control
// namespace and returns its stdout; the error carries its stderr.
func (cp *ControlPlane) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, cp.tools.Kubectl, append([]string{"--kubeconfig", cp.AdminKubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+filepath.Join(cp.Dir, "kube-cache"))
	cmd.Stdin = stdin
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cp.control.Do(cmd.Run); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (cp *ControlPlane) serverURL() string {
	return "https://" + net.JoinHostPort(APIServerIP, strconv.Itoa(apiServerPort))
}

func (cp *ControlPlane) adminCredentials() credentials {
	return credentials{user: "podwall-test-admin", certPEM: cp.admin.CertPEM, keyPEM: cp.admin.KeyPEM}
}

// restConfigFor completes base with the server, the admin identity and the
// in-namespace dialer.
func (cp *ControlPlane) restConfigFor(base rest.Config) *rest.Config {
	config := base
	config.Host = cp.serverURL()
	config.TLSClientConfig = rest.TLSClientConfig{CAData: cp.ca.CertPEM, CertData: cp.admin.CertPEM, KeyData: cp.admin.KeyPEM}
	config.Dial = cp.DialContext
	return &config
}

// waitFor polls check until it succeeds, failing early when a component
// has exited.
func (cp *ControlPlane) waitFor(ctx context.Context, what string, check func() error) error {
	return poll(ctx, what, cp.procs.firstExited, check)
}

func (cp *ControlPlane) logTails(t testing.TB) {
	cp.procs.mu.Lock()
	procs := cp.procs.procs
	cp.procs.mu.Unlock()
	for _, p := range procs {
		t.Logf("last lines of %s:\n%s", p.logPath, p.logTail(40))
	}
}

// serviceAPIServerIP is the first address of the service range, which the
// API server's certificate must name for in-cluster clients.
func serviceAPIServerIP() net.IP {
	ip, _, _ := net.ParseCIDR(ServiceCIDR)
	ip = ip.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+1)
}

// poll calls check every 200ms until it succeeds or ctx ends; fatal, when
// it returns an error, stops the wait at once.
func poll(ctx context.Context, what string, fatal func() error, check func() error) error {
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		if fatalErr := fatal(); fatalErr != nil {
			return fmt.Errorf("waiting for %s: %w", what, fatalErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-ticker.C:
		}
	}
}
