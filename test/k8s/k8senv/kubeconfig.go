package k8senv

import (
	"fmt"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// credentials authenticate one user: a client certificate, or a bearer
// token (a ServiceAccount's).
type credentials struct {
	user    string
	certPEM []byte
	keyPEM  []byte
	token   string
}

// writeKubeconfig writes a self-contained kubeconfig (certificates inlined)
// for server, so that the file can be handed to a process in any namespace
// that routes to the API server.
func writeKubeconfig(path, server string, caPEM []byte, creds credentials) error {
	const clusterName, contextName = "podwall-test", "podwall-test"
	config := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{
			clusterName: {Server: server, CertificateAuthorityData: caPEM},
		},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{
			creds.user: {ClientCertificateData: creds.certPEM, ClientKeyData: creds.keyPEM, Token: creds.token},
		},
		Contexts: map[string]*clientcmdapi.Context{
			contextName: {Cluster: clusterName, AuthInfo: creds.user},
		},
		CurrentContext: contextName,
	}
	if err := clientcmd.WriteToFile(config, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}
