package cniconf

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"

	"github.com/podwall/podwall/ipam"
)

// linkName is Linux's rule for interface names, the bridge's.
var linkName = regexp.MustCompile(`^[^/:\s]{1,15}$`)

// OwnOptions describe podwall's own conflist.
type OwnOptions struct {
	Network string // the network's name
	Bridge  string
	// Subnets are the IPAM ranges: "node" (the Node's podCIDRs, written by
	// the agent) or CIDRs.
	Subnets      []string
	ServiceCIDRs []string
	AgentSocket  string
	// IPAMDataDir and NodeCIDRsFile override podwall-ipam's defaults
	// (dataDir, nodeCIDRsFile) when set.
	IPAMDataDir   string
	NodeCIDRsFile string
	// CNIVersion is the list's cniVersion, MinCNIVersion to MaxCNIVersion;
	// empty means DefaultOwnCNIVersion.
	CNIVersion string
}

// DefaultOwnCNIVersion is the cniVersion of podwall's own conflist unless
// told otherwise. Not 1.1.0: containerd 1.6 (Debian 12's) refuses results of
// that version, and 1.0.0 gives every plugin of the list all it needs.
const DefaultOwnCNIVersion = "1.0.0"

// OwnConflist builds a complete conflist: bridge with podwall-ipam, then
// podwall, then portmap for hostPorts. Same options, same bytes.
func OwnConflist(o OwnOptions) ([]byte, error) {
	if err := ipam.ValidateNetworkName(o.Network); err != nil {
		return nil, err
	}
	if !linkName.MatchString(o.Bridge) {
		return nil, fmt.Errorf("invalid bridge name %q: 1 to 15 characters, no '/', ':' or blanks", o.Bridge)
	}
	if len(o.Subnets) == 0 {
		return nil, fmt.Errorf("no subnet given")
	}
	type rng struct {
		Subnet string `json:"subnet"`
	}
	var ranges []rng
	for _, s := range o.Subnets {
		if s != "node" {
			p, err := netip.ParsePrefix(s)
			if err != nil || p.Masked() != p {
				return nil, fmt.Errorf("subnet %q is neither \"node\" nor a canonical CIDR", s)
			}
		}
		ranges = append(ranges, rng{s})
	}
	for _, s := range o.ServiceCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			return nil, fmt.Errorf("service CIDR %q is not a CIDR", s)
		}
	}
	type ipamSection struct {
		Type          string   `json:"type"`
		Ranges        []rng    `json:"ranges"`
		ServiceCIDRs  []string `json:"serviceCIDRs,omitempty"`
		DataDir       string   `json:"dataDir,omitempty"`
		NodeCIDRsFile string   `json:"nodeCIDRsFile,omitempty"`
	}
	for _, p := range []string{o.IPAMDataDir, o.NodeCIDRsFile} {
		if p != "" && !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%q must be an absolute path", p)
		}
	}
	socket := o.AgentSocket
	if socket == "" {
		socket = DefaultAgentSocket
	}
	// isDefaultGateway gives each pod a default route per family it has an
	// address in, which a static "routes" list cannot do for "node" ranges.
	plugins, err := json.Marshal([]any{
		struct {
			Type             string      `json:"type"`
			Bridge           string      `json:"bridge"`
			IsGateway        bool        `json:"isGateway"`
			IsDefaultGateway bool        `json:"isDefaultGateway"`
			IPMasq           bool        `json:"ipMasq"`
			HairpinMode      bool        `json:"hairpinMode"`
			IPAM             ipamSection `json:"ipam"`
		}{"bridge", o.Bridge, true, true, true, true, ipamSection{"podwall-ipam", ranges, o.ServiceCIDRs, o.IPAMDataDir, o.NodeCIDRsFile}},
		PodwallPlugin(socket),
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding the conflist: %w", err)
	}
	cniVersion := o.CNIVersion
	if cniVersion == "" {
		cniVersion = DefaultOwnCNIVersion
	}
	if err := checkVersion(o.Network, cniVersion); err != nil {
		return nil, err
	}
	version, _ := json.Marshal(cniVersion) // cannot fail on strings
	name, _ := json.Marshal(o.Network)
	out, err := object{{"cniVersion", version}, {"name", name}, {"plugins", plugins}}.encode()
	if err != nil {
		return nil, err
	}
	return out, validateList(o.Network, out)
}
