package policy

import (
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Cache keeps, between compilations, what Compile derives from single
// objects: parsed NetworkPolicies, and pods' labels, addresses and ports.
// What is derived from one object depends on that object alone, so reusing
// it gives exactly the output of compiling anew; it only saves the work
// for the many objects that did not change. An object is recognised by
// namespace, name and metadata.resourceVersion, so only objects whose
// resourceVersion changes whenever their content does may carry one (the
// API server's objects do; the policy dir stamps a hash of each
// document). Objects without one are always derived anew. A pod's
// addresses are part of its key, since the agent replaces them with the
// ones the plugin reported.
//
// It also keeps what was derived from all the objects together (see
// clusterMemo), so that a compilation after a small change redoes only
// what the change touches. Compilations through one Cache return Desired
// values that share slices (rules, set members): treat them as read-only.
//
// Entries not used by the last compilation are dropped. A Cache is safe
// for concurrent use, though compilations through it are serialised.
type Cache struct {
	mu       sync.Mutex
	policies map[objectKey]*parsedPolicy
	pods     map[podKey]*cachedPod
	// cluster and policiesMemo are what the last compilation derived from
	// all its pods and namespaces, and from all its policies; nil when
	// they cannot be recognised (see clusterMemo).
	cluster      *clusterMemo
	policiesMemo *policiesMemo
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{policies: map[objectKey]*parsedPolicy{}, pods: map[podKey]*cachedPod{}}
}

type objectKey struct {
	namespace, name, version string
}

type podKey struct {
	objectKey
	podIP, podIPs string
}

// cachedPod is a pod's podInfo and the problems deriving it reported.
// Neither is changed once made.
type cachedPod struct {
	info     *podInfo
	problems []ruleset.Problem
}

// usage collects what one compilation used, to become the cache.
type usage struct {
	policies map[objectKey]*parsedPolicy
	pods     map[podKey]*cachedPod
}

func policyKey(np *networkingv1.NetworkPolicy) (objectKey, bool) {
	if np.ResourceVersion == "" {
		return objectKey{}, false
	}
	return objectKey{np.Namespace, np.Name, np.ResourceVersion}, true
}

func keyOfPod(pod *corev1.Pod) (podKey, bool) {
	if pod.ResourceVersion == "" {
		return podKey{}, false
	}
	var ips strings.Builder
	for _, ip := range pod.Status.PodIPs {
		ips.WriteString(ip.IP)
		ips.WriteByte(',')
	}
	return podKey{objectKey{pod.Namespace, pod.Name, pod.ResourceVersion}, pod.Status.PodIP, ips.String()}, true
}

// parsed returns the parsed policy, from the cache when it holds it.
func (c *Cache) parsed(u *usage, np *networkingv1.NetworkPolicy) *parsedPolicy {
	key, ok := policyKey(np)
	if !ok {
		return parsePolicy(np)
	}
	p := c.policies[key]
	if p == nil {
		p = parsePolicy(np)
	}
	u.policies[key] = p
	return p
}

// pod returns the pod's podInfo and its problems, from the cache when it
// holds them.
func (c *Cache) pod(u *usage, pod *corev1.Pod) (*podInfo, []ruleset.Problem) {
	key, ok := keyOfPod(pod)
	if !ok {
		return newPodInfo(pod)
	}
	cp := c.pods[key]
	if cp == nil {
		info, problems := newPodInfo(pod)
		cp = &cachedPod{info: info, problems: problems}
	}
	u.pods[key] = cp
	return cp.info, cp.problems
}
