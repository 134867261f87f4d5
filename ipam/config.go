// Package ipam is the pure core of podwall-ipam: configuration, address pools
// and the allocation rules. It knows nothing of files, netlink or exec; the
// store and the node's routes reach it through the Store interface and plain
// values.
package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultDataDir is where allocations live when the config names no dataDir.
const DefaultDataDir = "/var/lib/podwall/ipam"

// NodeSubnet, as a range's subnet, stands for the Node's podCIDRs, which the
// agent writes to the nodeCIDRsFile.
const NodeSubnet = "node"

// DefaultNodeCIDRsFile is where the agent writes the Node's podCIDRs when the
// config names no nodeCIDRsFile.
const DefaultNodeCIDRsFile = "/var/lib/podwall/node-podcidrs.json"

// Plugin-specific CNI error codes (the spec reserves 100 and above for them).
const (
	// ErrCodeExhausted: no active range of a needed family has a free address.
	ErrCodeExhausted uint = 100
	// ErrCodeAllocationMismatch: CHECK found an allocation that differs from prevResult.
	ErrCodeAllocationMismatch uint = 101
)

// RangeConfig is one entry of the "ranges" key.
type RangeConfig struct {
	Subnet   string `json:"subnet"`
	Gateway  string `json:"gateway,omitempty"`
	Draining bool   `json:"draining,omitempty"`
}

// RouteConfig is one entry of the "routes" key, returned in every result.
type RouteConfig struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// IPAMConfig is the "ipam" section exactly as written by the admin.
type IPAMConfig struct {
	Type         string        `json:"type"`
	Ranges       []RangeConfig `json:"ranges"`
	Exclude      []string      `json:"exclude,omitempty"`
	ServiceCIDRs []string      `json:"serviceCIDRs,omitempty"`
	DataDir      string        `json:"dataDir,omitempty"`
	Routes       []RouteConfig `json:"routes,omitempty"`
	// NodeCIDRsFile is read for a range whose subnet is "node".
	NodeCIDRsFile string `json:"nodeCIDRsFile,omitempty"`
}

// Range is a validated range.
type Range struct {
	Subnet   netip.Prefix
	Gateway  netip.Addr
	Draining bool
	// FromNode marks a range that is one of the Node's podCIDRs.
	FromNode bool
}

// label names a range in messages, saying where a Node's podCIDR came from.
func (r Range) label() string {
	if r.FromNode {
		return fmt.Sprintf("range %s (a podCIDR of the Node)", r.Subnet)
	}
	return fmt.Sprintf("range %s", r.Subnet)
}

// NodeRangeSlot is the place of {"subnet": "node"} in "ranges": the Node's
// podCIDRs go at Index among Ranges once they are known (WithNodeCIDRs).
type NodeRangeSlot struct {
	Index    int
	Draining bool
}

// Config is a validated network configuration for podwall-ipam.
type Config struct {
	CNIVersion   string
	Network      string
	Ranges       []Range
	Exclude      []netip.Prefix
	ServiceCIDRs []netip.Prefix
	DataDir      string
	Routes       []*types.Route

	// NodeRanges is set while "ranges" holds {"subnet": "node"} not yet
	// replaced by the Node's podCIDRs, read from NodeCIDRsFile by the thin
	// layers (only ADD and STATUS need them; DEL, CHECK and GC work by
	// container). Ranges then holds the other ranges only.
	NodeRanges    *NodeRangeSlot
	NodeCIDRsFile string

	// MainPlugin is the type of the plugin that delegated to us ("bridge",
	// "ptp", ...), empty when unknown; PodBridge is the bridge device of a
	// bridge main plugin. They tell the pod network's own routes apart.
	MainPlugin string
	PodBridge  string

	// ValidAttachments is set on GC only: nil when the key is absent, empty
	// (not nil) when it is present but empty or null.
	ValidAttachments []types.GCAttachment
	// PrevResult is the raw prevResult, set on CHECK (and sometimes DEL).
	PrevResult json.RawMessage
}

type netConf struct {
	CNIVersion       string          `json:"cniVersion"`
	Name             string          `json:"name"`
	IPAM             json.RawMessage `json:"ipam"`
	ValidAttachments json.RawMessage `json:"cni.dev/valid-attachments,omitempty"`
	// The key the CNI 1.1 spec first named, still sent by libcni.
	LegacyAttachments json.RawMessage `json:"cni.dev/attachments,omitempty"`
	PrevResult        json.RawMessage `json:"prevResult,omitempty"`
	Type              string          `json:"type"`
	Bridge            string          `json:"bridge"`
}

// The reference bridge plugin's device when its config names none.
const defaultBridgeName = "cni0"

// Network names become directory names; the CNI spec allows only these
// characters, which also rule out "." and "..".
var networkNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ValidateNetworkName applies the CNI spec's rule for network names, which
// podwall-ipam relies on to use the name as a directory under dataDir. It is
// the one definition: podwallctl install builds conflists with it too.
func ValidateNetworkName(name string) error {
	if !networkNamePattern.MatchString(name) {
		return fmt.Errorf("invalid network name %q: use letters, digits, '_', '.' and '-'", name)
	}
	return nil
}

func invalidConfig(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// ParseConfig reads the network configuration a main plugin hands to its IPAM
// plugin, and validates it completely before anything is touched.
func ParseConfig(stdin []byte) (*Config, error) {
	var nc netConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode network configuration: %v", err), "")
	}
	if err := ValidateNetworkName(nc.Name); err != nil {
		return nil, invalidConfig("%v", err)
	}
	if len(nc.IPAM) == 0 || string(nc.IPAM) == "null" {
		return nil, invalidConfig("network %q has no ipam section", nc.Name)
	}
	cfg, err := ParseIPAM(nc.IPAM)
	if err != nil {
		return nil, err
	}
	cfg.CNIVersion = nc.CNIVersion
	cfg.Network = nc.Name
	if err := decodeAttachments(cfg, nc); err != nil {
		return nil, err
	}
	cfg.PrevResult = nc.PrevResult
	cfg.MainPlugin = nc.Type
	if nc.Type == "bridge" {
		cfg.PodBridge = nc.Bridge
		if cfg.PodBridge == "" {
			cfg.PodBridge = defaultBridgeName
		}
	}
	return cfg, nil
}

// ParseIPAM validates an "ipam" section on its own (podwallctl uses it too).
func ParseIPAM(raw []byte) (*Config, error) {
	var ic IPAMConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	// A misspelt key (say "serviceCIDR") would silently drop a protection, so
	// unknown keys are refused rather than ignored.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ic); err != nil {
		var syntaxErr *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntaxErr), errors.As(err, &typeErr):
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode ipam section: %v", err), "")
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			field := strings.TrimPrefix(err.Error(), "json: unknown field ")
			return nil, types.NewError(types.ErrUnsupportedField, fmt.Sprintf("ipam: unsupported field %s", field), "")
		default:
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode ipam section: %v", err), "")
		}
	}
	if dec.More() {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode ipam section: trailing data after the JSON object", "")
	}
	return ic.validate()
}

func (ic *IPAMConfig) validate() (*Config, error) {
	cfg := &Config{DataDir: ic.DataDir}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if !strings.HasPrefix(cfg.DataDir, "/") {
		return nil, invalidConfig("ipam: dataDir %q must be an absolute path", ic.DataDir)
	}
	if len(ic.Ranges) == 0 {
		return nil, invalidConfig("ipam: no ranges configured")
	}
	for _, s := range ic.ServiceCIDRs {
		p, err := parseCIDR("serviceCIDRs", s, false)
		if err != nil {
			return nil, err
		}
		cfg.ServiceCIDRs = append(cfg.ServiceCIDRs, p)
	}
	for _, s := range ic.Exclude {
		p, err := parseCIDR("exclude", s, true)
		if err != nil {
			return nil, err
		}
		cfg.Exclude = append(cfg.Exclude, p)
	}
	for i, rc := range ic.Ranges {
		if rc.Subnet == NodeSubnet {
			if err := cfg.addNodeSlot(i, rc); err != nil {
				return nil, err
			}
			continue
		}
		r, err := parseRange(i, rc)
		if err != nil {
			return nil, err
		}
		cfg.Ranges = append(cfg.Ranges, r)
	}
	cfg.NodeCIDRsFile = ic.NodeCIDRsFile
	if cfg.NodeCIDRsFile == "" {
		cfg.NodeCIDRsFile = DefaultNodeCIDRsFile
	}
	if !strings.HasPrefix(cfg.NodeCIDRsFile, "/") {
		return nil, invalidConfig("ipam: nodeCIDRsFile %q must be an absolute path", ic.NodeCIDRsFile)
	}
	if err := cfg.checkRanges(); err != nil {
		return nil, err
	}
	for i, rc := range ic.Routes {
		route, err := parseRoute(i, rc)
		if err != nil {
			return nil, err
		}
		cfg.Routes = append(cfg.Routes, route)
	}
	return cfg, nil
}

// addNodeSlot records {"subnet": "node"} at ranges[i].
func (c *Config) addNodeSlot(i int, rc RangeConfig) error {
	if c.NodeRanges != nil {
		return invalidConfig("ipam: ranges[%d]: subnet %q is given twice; it already stands for every podCIDR of the Node", i, NodeSubnet)
	}
	if rc.Gateway != "" {
		// One entry becomes a range per family, known only at ADD: a single
		// gateway cannot fit them all.
		return invalidConfig("ipam: ranges[%d]: gateway %q cannot be set with subnet %q (the Node's podCIDRs, one per family, are known only at ADD); each gets its first address as gateway",
			i, rc.Gateway, NodeSubnet)
	}
	c.NodeRanges = &NodeRangeSlot{Index: len(c.Ranges), Draining: rc.Draining}
	return nil
}

// checkRanges enforces the rules between ranges, service CIDRs and
// exclusions, on the ranges known so far.
func (c *Config) checkRanges() error {
	for i, r := range c.Ranges {
		for _, prev := range c.Ranges[:i] {
			if prev.Subnet.Overlaps(r.Subnet) {
				return invalidConfig("ipam: %s overlaps %s", r.label(), prev.label())
			}
		}
		for _, svc := range c.ServiceCIDRs {
			if svc.Overlaps(r.Subnet) {
				return invalidConfig("ipam: %s overlaps service CIDR %s", r.label(), svc)
			}
		}
	}
	for _, r := range c.Ranges {
		if r.Draining {
			continue
		}
		if c.Pool(r, nil).Size().Sign() == 0 {
			return invalidConfig("ipam: %s has no allocatable address left after exclusions", r.label())
		}
	}
	return nil
}

// WithNodeCIDRs returns the configuration with {"subnet": "node"} replaced by
// one range per podCIDR of the Node (gateway: the first address), checked
// against every rule a configured range obeys. source names where the
// podCIDRs were read, for messages. A config without "node" is returned as is.
func (c *Config) WithNodeCIDRs(podCIDRs []netip.Prefix, source string) (*Config, error) {
	if c.NodeRanges == nil {
		return c, nil
	}
	if len(podCIDRs) == 0 {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("ipam: %s lists no podCIDR for the Node yet", source), "")
	}
	var nodeRanges []Range
	for _, p := range podCIDRs {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() || p.Masked() != p {
			return nil, invalidConfig("ipam: podCIDR %s read from %s is not a canonical CIDR", p, source)
		}
		if p.Addr().BitLen()-p.Bits() < 2 {
			return nil, invalidConfig("ipam: podCIDR %s read from %s is too small: it has no address besides network, broadcast and gateway", p, source)
		}
		nodeRanges = append(nodeRanges, Range{Subnet: p, Gateway: p.Addr().Next(), Draining: c.NodeRanges.Draining, FromNode: true})
	}
	out := *c
	out.NodeRanges = nil
	at := c.NodeRanges.Index
	out.Ranges = slices.Concat(c.Ranges[:at:at], nodeRanges, c.Ranges[at:])
	if err := out.checkRanges(); err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			e.Msg += fmt.Sprintf(" (podCIDRs read from %s)", source)
		}
		return nil, err
	}
	return &out, nil
}

// parseCIDR accepts a canonical CIDR; a bare address is accepted where allowSingle
// is set and means just that address.
func parseCIDR(key, s string, allowSingle bool) (netip.Prefix, error) {
	if allowSingle && !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, invalidConfig("ipam: %s: invalid address or CIDR %q", key, s)
		}
		if a.Is4In6() {
			return netip.Prefix{}, invalidConfig("ipam: %s: address %q: IPv4-mapped IPv6 is ambiguous, write the IPv4 form", key, s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, invalidConfig("ipam: %s: invalid CIDR %q", key, s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, invalidConfig("ipam: %s: invalid CIDR %q: IPv4-mapped IPv6 is ambiguous, write the IPv4 form", key, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, invalidConfig("ipam: %s: CIDR %q has host bits set (did you mean %s?)", key, s, p.Masked())
	}
	return p, nil
}

func parseRange(i int, rc RangeConfig) (Range, error) {
	key := fmt.Sprintf("ranges[%d].subnet", i)
	if rc.Subnet == "" {
		return Range{}, invalidConfig("ipam: %s is missing", key)
	}
	p, err := parseCIDR(key, rc.Subnet, false)
	if err != nil {
		return Range{}, err
	}
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 2 {
		return Range{}, invalidConfig("ipam: range %s is too small: it has no address besides network, broadcast and gateway", p)
	}
	r := Range{Subnet: p, Draining: rc.Draining}
	if rc.Gateway == "" {
		r.Gateway = p.Addr().Next()
	} else {
		gw, err := netip.ParseAddr(rc.Gateway)
		if err != nil || gw.Zone() != "" {
			return Range{}, invalidConfig("ipam: ranges[%d].gateway: invalid address %q", i, rc.Gateway)
		}
		gw = gw.Unmap()
		if !p.Contains(gw) {
			return Range{}, invalidConfig("ipam: ranges[%d].gateway %s is outside range %s", i, gw, p)
		}
		iv := prefixInterval(p)
		g := addrToU128(gw)
		if g == iv.first || (gw.Is4() && g == iv.last) {
			return Range{}, invalidConfig("ipam: ranges[%d].gateway %s is the network or broadcast address of %s", i, gw, p)
		}
		r.Gateway = gw
	}
	return r, nil
}

func parseRoute(i int, rc RouteConfig) (*types.Route, error) {
	dst, err := parseCIDR(fmt.Sprintf("routes[%d].dst", i), rc.Dst, false)
	if err != nil {
		return nil, err
	}
	route := &types.Route{Dst: net.IPNet{IP: net.IP(dst.Addr().AsSlice()), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if rc.GW != "" {
		gw := net.ParseIP(rc.GW)
		if gw == nil {
			return nil, invalidConfig("ipam: routes[%d].gw: invalid address %q", i, rc.GW)
		}
		route.GW = gw
	}
	return route, nil
}

// ActiveFamilies lists the IP families (4 or 6) of the active ranges, in the
// order they first appear: one address of each is handed out per attachment.
func (c *Config) ActiveFamilies() []int {
	var fams []int
	for _, r := range c.Ranges {
		if r.Draining {
			continue
		}
		f := family(r.Subnet.Addr())
		if len(fams) == 0 || (len(fams) == 1 && fams[0] != f) {
			fams = append(fams, f)
		}
	}
	return fams
}

// RangeOf returns the configured range holding ip.
func (c *Config) RangeOf(ip netip.Addr) (Range, bool) {
	for _, r := range c.Ranges {
		if r.Subnet.Contains(ip) {
			return r, true
		}
	}
	return Range{}, false
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// Canonical renders the validated configuration back in the admin's terms.
func (c *Config) Canonical() IPAMConfig {
	ic := IPAMConfig{Type: "podwall-ipam", DataDir: c.DataDir}
	for i, r := range c.Ranges {
		if c.NodeRanges != nil && c.NodeRanges.Index == i {
			ic.Ranges = append(ic.Ranges, c.nodeRangeConfig())
		}
		ic.Ranges = append(ic.Ranges, RangeConfig{Subnet: r.Subnet.String(), Gateway: r.Gateway.String(), Draining: r.Draining})
	}
	if c.NodeRanges != nil {
		if c.NodeRanges.Index >= len(c.Ranges) {
			ic.Ranges = append(ic.Ranges, c.nodeRangeConfig())
		}
		ic.NodeCIDRsFile = c.NodeCIDRsFile
	}
	for _, p := range c.Exclude {
		ic.Exclude = append(ic.Exclude, p.String())
	}
	for _, p := range c.ServiceCIDRs {
		ic.ServiceCIDRs = append(ic.ServiceCIDRs, p.String())
	}
	for _, r := range c.Routes {
		rc := RouteConfig{Dst: r.Dst.String()}
		if r.GW != nil {
			rc.GW = r.GW.String()
		}
		ic.Routes = append(ic.Routes, rc)
	}
	return ic
}

func (c *Config) nodeRangeConfig() RangeConfig {
	return RangeConfig{Subnet: NodeSubnet, Draining: c.NodeRanges.Draining}
}

// OverlapsRange reports whether p overlaps any configured range.
func (c *Config) OverlapsRange(p netip.Prefix) bool {
	for _, r := range c.Ranges {
		if r.Subnet.Overlaps(p) {
			return true
		}
	}
	return false
}

func decodeAttachments(cfg *Config, nc netConf) error {
	raw := nc.ValidAttachments
	if len(raw) == 0 {
		raw = nc.LegacyAttachments
	}
	if len(raw) == 0 {
		return nil
	}
	var list []types.GCAttachment
	if err := json.Unmarshal(raw, &list); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("cannot decode cni.dev/valid-attachments: %v", err), "")
	}
	cfg.ValidAttachments = append([]types.GCAttachment{}, list...)
	return nil
}
