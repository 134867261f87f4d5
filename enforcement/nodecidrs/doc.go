// Package nodecidrs hands the Node's spec.podCIDRs to podwall-ipam: the
// agent writes them to the file that the IPAM's "node" ranges read (its
// format is ipam/nodecidrs's), and raises it loudly when the block
// Kubernetes gave the node lies in a network the node already routes
// elsewhere.
package nodecidrs

import "github.com/podwall/podwall/ipam"

// DefaultPath is where the agent writes the file unless told otherwise
// (podwall-agent --pod-cidrs-file): where podwall-ipam reads it by default.
const DefaultPath = ipam.DefaultNodeCIDRsFile
