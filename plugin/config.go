package plugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	// DefaultAgentSocket is where the node agent listens.
	DefaultAgentSocket = "/run/podwall/agent.sock"
	// DefaultAgentTimeout bounds ADD's wait for the agent. Past it the pod
	// stays default-deny and the agent programs it when it comes back.
	DefaultAgentTimeout = 2 * time.Second

	validAttachmentsKey = "cni.dev/valid-attachments"
)

// Config is the plugin's network configuration. Unknown keys are ignored:
// runtimes add runtimeConfig, args and others.
type Config struct {
	types.NetConf
	AgentSocket     string `json:"agentSocket"`
	AgentTimeoutRaw string `json:"agentTimeout,omitempty"`

	AgentTimeout time.Duration `json:"-"`
	// StateDir holds the iptables lock: the agent socket's directory.
	StateDir string `json:"-"`
}

func invalid(format string, args ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// ParseConfig reads and validates stdin. It does not parse prevResult.
func ParseConfig(stdin []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("podwall: parsing network configuration: %v", err), "")
	}
	if c.Type != "" && c.Type != "podwall" {
		return nil, invalid("podwall: config type is %q", c.Type)
	}
	if c.Name == "" {
		return nil, invalid("podwall: network name missing")
	}
	if c.CNIVersion == "" {
		return nil, invalid("podwall: cniVersion missing")
	}
	if ok, err := version.GreaterThanOrEqualTo(c.CNIVersion, "0.4.0"); err != nil || !ok {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("podwall: cniVersion %q unsupported (0.4.0 to 1.1.0)", c.CNIVersion), "")
	}
	if c.AgentSocket == "" {
		c.AgentSocket = DefaultAgentSocket
	}
	if !filepath.IsAbs(c.AgentSocket) {
		return nil, invalid("podwall: agentSocket %q must be an absolute path", c.AgentSocket)
	}
	c.AgentTimeout = DefaultAgentTimeout
	if c.AgentTimeoutRaw != "" {
		d, err := time.ParseDuration(c.AgentTimeoutRaw)
		if err != nil || d <= 0 {
			return nil, invalid("podwall: agentTimeout %q is not a positive duration", c.AgentTimeoutRaw)
		}
		c.AgentTimeout = d
	}
	c.StateDir = filepath.Dir(c.AgentSocket)
	return &c, nil
}

// validAttachments reads cni.dev/valid-attachments. An absent key is an
// error: read as "nothing is valid" it would remove every pod's chains.
// libcni sends null for an empty list, which is an empty list.
func validAttachments(stdin []byte) ([]types.GCAttachment, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("podwall: parsing network configuration: %v", err), "")
	}
	list, ok := raw[validAttachmentsKey]
	if !ok {
		return nil, invalid("podwall: GC needs %s (an absent list would remove every pod's chains)", validAttachmentsKey)
	}
	var out []types.GCAttachment
	if err := json.Unmarshal(list, &out); err != nil {
		return nil, invalid("podwall: %s: %v", validAttachmentsKey, err)
	}
	return out, nil
}
