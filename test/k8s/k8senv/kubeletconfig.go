package k8senv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// kubeletConfig is the KubeletConfiguration of a test node. The host runs
// cgroup v1 (failCgroupV1: false) and no systemd (cgroupfs); pods and
// their containers live below cgroupRoot, which teardown removes.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
imageServiceEndpoint: unix://%[2]s
address: %[3]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[6]s}
authorization: {mode: AlwaysAllow}
podLogsDir: %[7]s
volumePluginDir: %[8]s
resolvConf: %[9]s
clusterDomain: cluster.local
# the node namespace's iptables belong to the CNI plugins under test
makeIPTablesUtilChains: false
registerNode: true
maxPods: 110
serializeImagePulls: false
# the only image is imported, never pulled: never collect it
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 10s
`

// startKubelet writes the kubelet's identity and configuration and starts
// it in the node namespace.
func (n *KubeletNode) startKubelet() error {
	pki := filepath.Join(n.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", pki, err)
	}
	caPath, err := n.cp.ca.writeCert(pki, "ca")
	if err != nil {
		return err
	}
	// The Node authorizer and NodeRestriction know a kubelet by this name.
	client, err := n.cp.ca.issue(certSpec{commonName: "system:node:" + n.Name, groups: []string{"system:nodes"}})
	if err != nil {
		return err
	}
	serving, err := n.cp.ca.issue(certSpec{
		commonName: n.Name, server: true,
		ips: []net.IP{net.ParseIP(n.IP), net.ParseIP("127.0.0.1")}, dnsNames: []string{n.Name, "localhost"},
	})
	if err != nil {
		return err
	}
	servingCert, servingKey, err := serving.write(pki, "kubelet-serving")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	creds := credentials{user: "system:node:" + n.Name, certPEM: client.CertPEM, keyPEM: client.KeyPEM}
	if err := writeKubeconfig(kubeconfig, n.cp.serverURL(), n.cp.ca.CertPEM, creds); err != nil {
		return err
	}
	resolvConf := filepath.Join(n.Dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", resolvConf, err)
	}
	root := filepath.Join(n.Dir, "kubelet")
	config := fmt.Sprintf(kubeletConfig, n.cgroupRoot, n.containerdSocket, n.IP, servingCert, servingKey, caPath,
		filepath.Join(n.Dir, "pod-logs"), filepath.Join(root, "volume-plugins"), resolvConf)
	configPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", configPath, err)
	}
	p, err := startProcess(n.Node.NetNS(), n.Dir, "kubelet", n.tools.Kubelet,
		"--config", configPath, "--kubeconfig", kubeconfig,
		"--root-dir", root, "--cert-dir", filepath.Join(root, "pki"),
		"--hostname-override", n.Name, "--node-ip", n.IP, "--v", "1")
	if err != nil {
		return err
	}
	n.procs.add(p)
	n.kubelet = p
	return nil
}
