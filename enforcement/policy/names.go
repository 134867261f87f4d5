package policy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
)

const (
	// Prefix starts every chain and set podwall owns, and nothing else.
	Prefix = "PODWALL-"

	// TargetAllow is the target of a rule that lets a packet through a pod
	// chain: back to the dispatcher, which goes on to the peer's chain.
	TargetAllow = "RETURN"
	// TargetDeny is the target of a rule that refuses a packet.
	TargetDeny = "DROP"

	ingressChainPrefix = Prefix + "IN-"
	egressChainPrefix  = Prefix + "OUT-"

	// keyLen characters of base32 carry 80 bits of hash. With the longest
	// chain prefix it makes 28 characters, the iptables maximum.
	keyLen = 16

	maxChainName = 28
	maxSetName   = 31
)

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ChainKey derives a chain key from the parts that identify an attachment.
// The plugin calls it with (network name, container ID, interface name),
// which it has at ADD, DEL, CHECK and GC alike; the same parts always give
// the same key.
func ChainKey(parts ...string) string {
	return hashName(parts...)
}

// ChainNames returns the ingress and egress chain names for a key.
func ChainNames(key string) (ingress, egress string, err error) {
	if err := ValidateChainKey(key); err != nil {
		return "", "", err
	}
	return ingressChainPrefix + key, egressChainPrefix + key, nil
}

// ValidateChainKey checks that a key is 1 to 16 ASCII letters or digits, so
// that both chain names are valid and at most 28 characters long.
func ValidateChainKey(key string) error {
	if len(key) == 0 || len(key) > keyLen {
		return fmt.Errorf("chain key %q: want 1 to %d characters", key, keyLen)
	}
	for _, c := range key {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return fmt.Errorf("chain key %q: only letters and digits are allowed", key)
		}
	}
	return nil
}

// hashName is a stable 16-character base32 digest of the parts. Parts are
// length-prefixed so that ("ab","c") and ("a","bc") differ.
func hashName(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return keyEncoding.EncodeToString(h.Sum(nil))[:keyLen]
}

// setKind is the part of a set name that says what the set holds.
type setKind string

const (
	kindPods    setKind = "PODS" // hash:ip of selected pods
	kindCIDR    setKind = "CIDR" // hash:net of an ipBlock
	kindPodPort setKind = "PORT" // hash:ip,port of pods serving a named port
)

func setName(kind setKind, f Family, contentKey string) string {
	digit := "4"
	if f == IPv6 {
		digit = "6"
	}
	return Prefix + string(kind) + digit + "-" + hashName(string(kind), string(f), contentKey)
}
