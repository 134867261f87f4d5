// Package cniconf installs podwall into a node's CNI configuration directory
// the way a container runtime reads it: the active network is the
// lexically first *.conf, *.conflist or *.json file (libcni.ConfFiles, then
// sorted by name, as containerd's go-cni and CRI-O's ocicni do), and a
// *.conf or *.json file holds a single plugin.
//
// The JSON transformations (Chain, OwnConflist) are pure; Dir applies them to
// a directory atomically and keeps the originals for Uninstall.
package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
)

// Extensions are the file extensions runtimes load network configs from.
var Extensions = []string{".conf", ".conflist", ".json"}

// PluginType is the chained plugin's type.
const PluginType = "podwall"

// DefaultAgentSocket is the agent's socket named in the inserted plugin.
const DefaultAgentSocket = "/run/podwall/agent.sock"

// Versions podwall's chained plugin speaks. Chaining needs prevResult, which
// appeared in 0.4.0.
const (
	MinCNIVersion = "0.4.0"
	MaxCNIVersion = "1.1.0"
)

// RefusedError is a configuration podwall cannot be chained into.
type RefusedError struct {
	File   string
	Reason string
}

func (e *RefusedError) Error() string { return fmt.Sprintf("%s: %s", e.File, e.Reason) }

func refuse(file, format string, args ...any) error {
	return &RefusedError{File: file, Reason: fmt.Sprintf(format, args...)}
}

// ActiveFile returns the config a runtime loads among names (base names of
// a directory's regular files): the lexically first with a known extension.
func ActiveFile(names []string) (string, bool) {
	var candidates []string
	for _, n := range names {
		if slices.Contains(Extensions, filepath.Ext(n)) {
			candidates = append(candidates, n)
		}
	}
	if len(candidates) == 0 {
		return "", false
	}
	slices.Sort(candidates)
	return candidates[0], true
}

// IsList reports whether a file of that name is read as a conflist.
func IsList(name string) bool { return filepath.Ext(name) == ".conflist" }

// ListName is the name a single-plugin file gets once converted to a list.
func ListName(name string) string {
	return strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
}

// PodwallPlugin is the plugin object inserted after the main plugin.
func PodwallPlugin(agentSocket string) json.RawMessage {
	out, _ := json.Marshal(struct { // cannot fail on strings
		Type        string `json:"type"`
		AgentSocket string `json:"agentSocket"`
	}{PluginType, agentSocket})
	return out
}

// Chain returns the content of file name (content data) with podwall
// inserted right after the main plugin, the name it must be saved under
// (a single-plugin .conf or .json becomes a .conflist of the same effect, as
// libcni's ConfListFromConf builds it), and whether anything changed. A
// list already holding exactly podwall at plugins[1] is left as it is; any
// other podwall entry is replaced.
func Chain(name string, data []byte, agentSocket string) (newName string, out []byte, changed bool, err error) {
	top, err := decodeObject(data)
	if err != nil {
		return "", nil, false, refuse(name, "not a JSON object: %v", err)
	}
	want := PodwallPlugin(agentSocket)
	if !IsList(name) {
		if _, ok := top.get("plugins"); ok {
			return "", nil, false, refuse(name, "has a \"plugins\" list but a %s file is read as a single plugin (runtimes would fail on it); rename it to .conflist", filepath.Ext(name))
		}
		if err := checkSingle(name, data); err != nil {
			return "", nil, false, err
		}
		nameRaw, _ := top.get("name")
		verRaw, _ := top.get("cniVersion")
		list := object{{"cniVersion", verRaw}, {"name", nameRaw}}
		plugins, _ := json.Marshal([]json.RawMessage{compact(data), want})
		list = append(list, member{"plugins", plugins})
		out, err := list.encode()
		if err != nil {
			return "", nil, false, err
		}
		return ListName(name), out, true, validateList(ListName(name), out)
	}
	if err := checkList(name, data); err != nil {
		return "", nil, false, err
	}
	raw, _ := top.get("plugins")
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return "", nil, false, refuse(name, "\"plugins\" is not a list of objects: %v", err)
	}
	if isPodwall(plugins[0]) {
		return "", nil, false, refuse(name, "plugins[0] is podwall itself: there is no main plugin to chain after")
	}
	if len(plugins) > 1 && sameJSON(plugins[1], want) && !slices.ContainsFunc(plugins[2:], isPodwall) {
		return name, data, false, nil
	}
	rest := slices.DeleteFunc(slices.Clone(plugins[1:]), isPodwall)
	plugins = slices.Concat(plugins[:1], []json.RawMessage{want}, rest)
	newPlugins, err := json.Marshal(plugins)
	if err != nil {
		return "", nil, false, err
	}
	top.set("plugins", newPlugins)
	out, err = top.encode()
	if err != nil {
		return "", nil, false, err
	}
	return name, out, true, validateList(name, out)
}

// checkList vets a conflist as a runtime and podwall would read it.
func checkList(name string, data []byte) error {
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return refuse(name, "%v", err)
	}
	if len(list.Plugins) == 0 {
		return refuse(name, "the conflist has no plugins: there is no main plugin to chain after")
	}
	for i, p := range list.Plugins {
		if p.Network.Type == "" {
			return refuse(name, "plugins[%d] has no \"type\"", i)
		}
	}
	return checkVersion(name, list.CNIVersion)
}

func checkSingle(name string, data []byte) error {
	conf, err := libcni.ConfFromBytes(data)
	if err != nil {
		return refuse(name, "%v", err)
	}
	if conf.Network.Type == "" {
		return refuse(name, "no \"type\": not a plugin configuration")
	}
	if conf.Network.Name == "" {
		return refuse(name, "no \"name\"")
	}
	return checkVersion(name, conf.Network.CNIVersion)
}

func checkVersion(name, v string) error {
	if v == "" {
		return refuse(name, "no cniVersion (read as 0.1.0): podwall needs %s or later, because a chained plugin gets the pod's addresses from prevResult, which CNI introduced in 0.4.0", MinCNIVersion)
	}
	ok, err := version.GreaterThanOrEqualTo(v, MinCNIVersion)
	if err != nil {
		return refuse(name, "cniVersion %q is not a version: %v", v, err)
	}
	if !ok {
		return refuse(name, "cniVersion %s is below %s: a chained plugin gets the pod's addresses from prevResult, which CNI introduced in 0.4.0; raise the conflist's cniVersion (its plugins must support it) or use --write-conflist", v, MinCNIVersion)
	}
	if newer, _ := version.GreaterThan(v, MaxCNIVersion); newer {
		return refuse(name, "cniVersion %s is newer than podwall speaks (%s to %s)", v, MinCNIVersion, MaxCNIVersion)
	}
	return nil
}

// validateList parses an output as the runtime will, as a last guard.
func validateList(name string, data []byte) error {
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return fmt.Errorf("%s: the edited configuration does not parse: %w", name, err)
	}
	if len(list.Plugins) < 2 || list.Plugins[1].Network.Type != PluginType {
		return fmt.Errorf("%s: the edited configuration lost podwall", name)
	}
	return nil
}

func isPodwall(raw json.RawMessage) bool {
	var p struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(raw, &p) == nil && p.Type == PluginType
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x) // maps marshal with sorted keys
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func compact(data []byte) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, data) != nil {
		return data
	}
	return b.Bytes()
}

// object is a JSON object whose key order is kept, so that an edited
// conflist reads like the admin's.
type object []member

type member struct {
	key   string
	value json.RawMessage
}

func decodeObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("the top level is not an object")
	}
	var obj object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string) // object keys are strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if _, dup := obj.get(key); dup {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		obj = append(obj, member{key, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the object")
	}
	return obj, nil
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.value, true
		}
	}
	return nil, false
}

func (o *object) set(key string, v json.RawMessage) {
	for i := range *o {
		if (*o)[i].key == key {
			(*o)[i].value = v
			return
		}
	}
	*o = append(*o, member{key, v})
}

// encode writes the object indented by two spaces, with a final newline.
func (o object) encode() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}
