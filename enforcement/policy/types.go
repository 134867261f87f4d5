package policy

import (
	"fmt"
	"net/netip"

	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Mode decides what a pod that no policy selects gets in that direction.
type Mode string

const (
	// ModeDeny isolates every pod in both directions; only policies open it.
	ModeDeny Mode = "deny"
	// ModeKubernetes follows the NetworkPolicy API: unselected means open.
	ModeKubernetes Mode = "kubernetes"
)

// ParseMode accepts "deny", "kubernetes", or "" (which means deny).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeDeny:
		return ModeDeny, nil
	case ModeKubernetes:
		return ModeKubernetes, nil
	}
	return "", fmt.Errorf("unknown policy mode %q (want %q or %q)", s, ModeDeny, ModeKubernetes)
}

// Input is everything the compiler knows about the cluster.
type Input struct {
	// Namespaces give the labels namespaceSelectors match. The compiler adds
	// kubernetes.io/metadata.name itself, as the API server does.
	Namespaces []corev1.Namespace
	// Pods give labels, status.podIPs (status.podIP as a fallback),
	// spec.nodeName, and named container ports. Every pod is a potential
	// peer; host-network and finished pods never are.
	Pods     []corev1.Pod
	Policies []networkingv1.NetworkPolicy
	// Node is this node's name. A pod scheduled here (spec.nodeName) that
	// has no chain key yet is listed in Desired.Pending.
	Node string
	Mode Mode
	// ChainKeys maps each pod attached on this node (namespace/name; an
	// empty namespace means "default") to the key its chains are named
	// from: see ChainKey and ChainNames. The CNI plugin computes the key at
	// ADD and reports it with the pod's identity. Exactly the keyed pods get
	// chains; pods on other nodes are only peers. A keyed pod is enforced
	// here even if its spec.nodeName names another node (that is reported),
	// and a key whose pod is missing from Pods still gets chains, which
	// drop everything, so that an attached pod never loses its chains.
	ChainKeys map[ruleset.Ref]string
	// PodIPs replaces the addresses of the pods it names (whatever their
	// status says, even nothing): for a pod attached here, the addresses
	// the CNI plugin reported, which are what the kernel sees.
	PodIPs map[ruleset.Ref][]netip.Addr
}
