package harness

import (
	"encoding/json"
	"fmt"
	"strings"
)

// DefaultCNIVersion is the cniVersion of the conflists the helpers build.
const DefaultCNIVersion = "1.1.0"

type confSpec struct {
	cniVersion string
	chained    [][]byte
}

// ConfOption adjusts a conflist built by BridgeConflist or PTPConflist.
type ConfOption func(*confSpec)

// WithCNIVersion sets the conflist's cniVersion.
func WithCNIVersion(v string) ConfOption { return func(s *confSpec) { s.cniVersion = v } }

// WithChained appends plugin configs (JSON objects) after the main plugin,
// e.g. podwall's chained plugin or portmap.
func WithChained(plugins ...[]byte) ConfOption {
	return func(s *confSpec) { s.chained = append(s.chained, plugins...) }
}

// BridgeConflist builds a conflist whose main plugin is the reference
// bridge: bridge named bridgeName acting as the pods' gateway, no masquerade,
// ipam spliced in verbatim (so deliberately bad IPAM configs go through).
func BridgeConflist(name, bridgeName string, ipam []byte, opts ...ConfOption) []byte {
	main := map[string]any{"type": "bridge", "bridge": bridgeName, "isGateway": true, "ipMasq": false}
	return conflist(name, withIPAM(main, ipam), opts)
}

// PTPConflist builds a conflist whose main plugin is the reference ptp
// (one routed veth per pod, no masquerade), ipam spliced in verbatim.
func PTPConflist(name string, ipam []byte, opts ...ConfOption) []byte {
	main := map[string]any{"type": "ptp", "ipMasq": false}
	return conflist(name, withIPAM(main, ipam), opts)
}

// HostLocalIPAM builds a host-local IPAM section with one range set per
// subnet. dataDir should be under the node's Dir: host-local's default is
// on the host.
func HostLocalIPAM(dataDir string, subnets ...string) []byte {
	ranges := make([][]map[string]string, 0, len(subnets))
	for _, subnet := range subnets {
		ranges = append(ranges, []map[string]string{{"subnet": subnet}})
	}
	out, _ := json.Marshal(map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": ranges}) // cannot fail on strings
	return out
}

// IPAMStdin builds what a main plugin hands its IPAM plugin on stdin: the
// network's name and cniVersion, the main plugin's type, and the ipam
// section verbatim.
func IPAMStdin(name, cniVersion string, ipam []byte) []byte {
	head, _ := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": name, "type": "bridge"})
	return spliceField(head, "ipam", ipam)
}

// InjectJSON returns the JSON object conf with key set to value, e.g.
// prevResult for CHECK or cni.dev/valid-attachments for GC.
func InjectJSON(conf []byte, key string, value any) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(conf, &obj); err != nil {
		return nil, fmt.Errorf("parsing config to inject %s: %w", key, err)
	}
	raw, err := json.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", key, err)
	}
	obj[key] = raw
	return json.Marshal(obj)
}

func withIPAM(plugin map[string]any, ipam []byte) []byte {
	out, _ := json.Marshal(plugin) // cannot fail on strings and bools
	if ipam == nil {
		return out
	}
	return spliceField(out, "ipam", ipam)
}

func conflist(name string, main []byte, opts []ConfOption) []byte {
	spec := confSpec{cniVersion: DefaultCNIVersion}
	for _, opt := range opts {
		opt(&spec)
	}
	plugins := append([][]byte{main}, spec.chained...)
	parts := make([]string, len(plugins))
	for i, p := range plugins {
		parts[i] = string(p)
	}
	head, _ := json.Marshal(map[string]string{"cniVersion": spec.cniVersion, "name": name})
	return spliceField(head, "plugins", []byte("["+strings.Join(parts, ",")+"]"))
}

// spliceField adds "key": raw to the JSON object obj without re-encoding raw.
func spliceField(obj []byte, key string, raw []byte) []byte {
	k, _ := json.Marshal(key)
	trimmed := strings.TrimSuffix(strings.TrimSpace(string(obj)), "}")
	sep := ","
	if strings.TrimSpace(trimmed) == "{" {
		sep = ""
	}
	return []byte(trimmed + sep + string(k) + ":" + string(raw) + "}")
}
