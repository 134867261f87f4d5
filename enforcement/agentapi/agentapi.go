// Package agentapi is the protocol between the podwall CNI plugin, podwallctl
// and the node agent: JSON over HTTP on the agent's unix socket.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Paths served by the agent.
const (
	PathAttach  = "/v1/attach"
	PathDetach  = "/v1/detach"
	PathSync    = "/v1/sync"
	PathStatus  = "/v1/status"
	PathHealthz = "/healthz"
)

// Attachment is a pod interface the plugin has put behind default-deny chains.
type Attachment struct {
	Key         string   `json:"key"`
	Network     string   `json:"network"`
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	IPs         []string `json:"ips"`
	HostIface   string   `json:"hostIface"`
	Layout      string   `json:"layout"`
	// Bridge is the bridge HostIface is a port of (layout "bridge").
	Bridge string `json:"bridge,omitempty"`
}

// Detach asks the agent to forget a pod whose chains the plugin removed.
type Detach struct {
	Key string `json:"key"`
}

// PodStatus is one local pod as the agent enforces it.
type PodStatus struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	Key        string   `json:"key"`
	IPs        []string `json:"ips"`
	Programmed bool     `json:"programmed"`
}

// Stats counts what the agent has in the kernel.
type Stats struct {
	Chains     int `json:"chains"`
	Rules      int `json:"rules"`
	Sets       int `json:"sets"`
	SetEntries int `json:"setEntries"`
}

// Status is what the agent enforces.
type Status struct {
	Ready      bool        `json:"ready"`
	Mode       string      `json:"mode"`
	Generation uint64      `json:"generation"`
	Pods       []PodStatus `json:"pods"`
	Policies   int         `json:"policies"`
	Problems   []string    `json:"problems,omitempty"`
	LastApply  time.Time   `json:"lastApply,omitzero"`
	LastError  string      `json:"lastError,omitempty"`
	Stats      Stats       `json:"stats"`
}

// ErrorBody is the body of every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// Client talks to an agent's socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socketPath.
func NewClient(socketPath string) *Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: transport}}
}

// Attach reports a new attachment; it returns once the pod's policy is in
// the kernel.
func (c *Client) Attach(ctx context.Context, a Attachment) error {
	return c.do(ctx, http.MethodPost, PathAttach, a, nil)
}

// Detach reports that a pod's chains are gone.
func (c *Client) Detach(ctx context.Context, key string) error {
	return c.do(ctx, http.MethodPost, PathDetach, Detach{Key: key}, nil)
}

// Sync makes the agent catch up with its sources and enforce the result.
func (c *Client) Sync(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodPost, PathSync, struct{}{}, &st)
	return st, err
}

// Status returns what the agent enforces.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &st)
	return st, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://podwall-agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("agent at %s: reading %s answer: %w", c.socket, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			return &Error{Status: resp.StatusCode, Message: eb.Error}
		}
		return &Error{Status: resp.StatusCode, Message: string(bytes.TrimSpace(data))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("agent at %s: decoding %s answer: %w", c.socket, path, err)
		}
	}
	return nil
}

// Error is an answer of the agent other than success.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("agent: %s (HTTP %d)", e.Message, e.Status) }

// IsAgentError reports whether err came from the agent itself (as opposed to
// not reaching it).
func IsAgentError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
