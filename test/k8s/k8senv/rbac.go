package k8senv

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/test/harness"
)

// The agent's identity as deploy/ defines it.
const (
	agentNamespace      = "kube-system"
	agentServiceAccount = "podwall"
	// agentTokenLifetime outlasts any test run.
	agentTokenLifetime = 24 * time.Hour
)

// agentRBACFiles are the manifests of deploy/ that give the agent its
// rights; the DaemonSet is left out (nothing here would run it).
var agentRBACFiles = []string{"serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml"}

// agentCredentials applies deploy/'s ServiceAccount, ClusterRole and
// ClusterRoleBinding (once per control plane) and returns a token of that
// ServiceAccount.
func (cp *ControlPlane) agentCredentials() (credentials, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.agentToken != "" {
		return credentials{user: agentServiceAccount, token: cp.agentToken}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin, err := harness.BinDir()
	if err != nil {
		return credentials{}, err
	}
	args := []string{"apply", "--namespace", agentNamespace}
	for _, name := range agentRBACFiles {
		args = append(args, "-f", filepath.Join(filepath.Dir(bin), "deploy", name))
	}
	if _, err := cp.Kubectl(ctx, nil, args...); err != nil {
		return credentials{}, fmt.Errorf("applying the agent's RBAC from deploy/: %w", err)
	}
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return credentials{}, err
	}
	seconds := int64(agentTokenLifetime / time.Second)
	token, err := client.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, agentServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
	if err != nil {
		return credentials{}, fmt.Errorf("requesting a token of %s/%s: %w", agentNamespace, agentServiceAccount, err)
	}
	cp.agentToken = token.Status.Token
	return credentials{user: agentServiceAccount, token: cp.agentToken}, nil
}
