package policy

import (
	"github.com/podwall/podwall/enforcement/ruleset"
)

const (
	// Prefix starts every chain and set podwall owns, and nothing else.
	Prefix = ruleset.Prefix

	// TargetAllow is the target of a rule that lets a packet through a pod
	// chain: back to the dispatcher, which goes on to the peer's chain.
	TargetAllow = "RETURN"
	// TargetDeny is the target of a rule that refuses a packet.
	TargetDeny = "DROP"

	maxChainName = 28
	maxSetName   = 31
)

// ChainKey derives a chain key from the parts that identify an attachment
// (see ruleset.ChainKey).
func ChainKey(parts ...string) string { return ruleset.ChainKey(parts...) }

// ChainNames returns the ingress and egress chain names for a key.
func ChainNames(key string) (ingress, egress string, err error) { return ruleset.ChainNames(key) }

// ValidateChainKey checks that a key can name chains (see ruleset).
func ValidateChainKey(key string) error { return ruleset.ValidateChainKey(key) }

// hashName is a stable 16-character digest of the parts.
func hashName(parts ...string) string { return ruleset.Digest(parts...) }

// setKind is the part of a set name that says what the set holds.
type setKind string

const (
	kindPods    setKind = "PODS" // hash:ip of selected pods
	kindCIDR    setKind = "CIDR" // hash:net of an ipBlock
	kindPodPort setKind = "PORT" // hash:ip,port of pods serving a named port
)

func setName(kind setKind, f ruleset.Family, contentKey string) string {
	digit := "4"
	if f == ruleset.IPv6 {
		digit = "6"
	}
	return Prefix + string(kind) + digit + "-" + hashName(string(kind), string(f), contentKey)
}
