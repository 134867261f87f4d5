// Package policy compiles Kubernetes NetworkPolicy (networking.k8s.io/v1)
// into the ipsets and per-pod iptables chains that enforce it on one node.
//
// The package is pure: it reads API objects and returns data. It never runs
// iptables or ipset, opens files or talks netlink; the dataplane applier
// turns a Desired into `ipset restore` and `iptables-restore --noflush`
// input, and the package iptsim interprets a Desired the way the kernel
// would, which is how the compiler is tested.
//
// # Chains and the dispatch contract
//
// Every attached pod on the node owns two chains per IP family:
// PODWALL-IN-<key> judges packets to the pod, PODWALL-OUT-<key> packets
// from it. The key is supplied by the caller (Input.ChainKeys) so that the
// CNI plugin can create the same chains, default-deny, at ADD
// time before the agent has heard of the pod; ChainKey derives one from the
// attachment (network, container ID, interface name), which is what DEL
// also has at hand. ChainNames turns a key into the two names.
//
// A chain that allows a packet RETURNs it (TargetAllow); a chain that does
// not, DROPs it (TargetDeny). Every chain ends in an unconditional verdict,
// so nothing falls through. The chains the plugin creates at ADD should hold
// the single rule "-j DROP"; the agent then replaces their contents with
// what Compile says. The dispatcher, which the plugin owns, sends a
// packet first through the source pod's OUT chain (if that pod is local),
// then through the destination pod's IN chain (if local), and accepts what
// comes back. RETURN instead of ACCEPT is what lets one packet traverse both
// pods' chains on the same node.
//
// # Modes
//
// In ModeDeny (the default) a pod that no policy selects for a direction
// gets nothing in that direction: its chain only DROPs. In ModeKubernetes it
// is open in that direction, as the NetworkPolicy API specifies.
//
// A pod that has no address in a family gets chains that DROP everything in
// that family, in both modes: there is no bypass through the other family.
//
// # Peers are sets
//
// Rules never list peer addresses. A podSelector/namespaceSelector peer is
// a hash:ip set of the selected pods' addresses, an ipBlock is a hash:net set
// whose except entries carry the nomatch flag, and an egress rule with a
// named port is a hash:ip,port set of the selected pods' address, protocol
// and the port that name resolves to on each of them. Sets are named from
// their content (selectors, CIDRs, port name), so identical peers share one
// set, and peers coming, going or changing labels only change set members:
// rules change only when policies or the local pod itself change. The number
// of rules is proportional to the local pods times the rules of the
// policies that select them, whatever the number of peers.
//
// # Invalid objects fail closed
//
// An invalid NetworkPolicy (one the API server would reject: bad selector,
// bad CIDR or except, endPort below port or with a named port, unknown
// protocol or policyType, empty peer...) is reported in Desired.Problems and
// contributes no allow at all. It still isolates the pods it selects in the
// directions it declares; when its policyTypes are unusable it isolates both
// directions, and when its podSelector cannot be parsed it isolates every pod
// of its namespace. In ModeDeny isolation changes nothing; in ModeKubernetes
// it means an invalid policy can only ever deny more, never allow.
package policy
