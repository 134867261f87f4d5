package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
)

// PluginError is a plugin run that exited non-zero. It unwraps to the CNI
// error the plugin printed, so errors.As(err, new(*types.Error)) gives the
// spec's code and message.
type PluginError struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
	CNI      *types.Error // nil when stdout held no CNI error JSON
}

func (e *PluginError) Error() string {
	if e.CNI != nil {
		return fmt.Sprintf("plugin exited %d: %v", e.ExitCode, e.CNI)
	}
	return fmt.Sprintf("plugin exited %d, stdout %q, stderr %q", e.ExitCode, e.Stdout, e.Stderr)
}

func (e *PluginError) Unwrap() error {
	if e.CNI == nil {
		return nil
	}
	return e.CNI
}

// InvokePlugin runs one plugin binary in the node namespace the way a main
// plugin delegates to its IPAM plugin: command is ADD, DEL, CHECK, GC,
// STATUS or VERSION, stdin the full network config (see IPAMStdin). pod
// supplies CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS; nil leaves
// them empty, as for GC and STATUS. It returns stdout, also on failure, and a
// *PluginError when the plugin exits non-zero.
func (n *Node) InvokePlugin(ctx context.Context, pluginType, command string, pod *Pod, stdin []byte) ([]byte, error) {
	cmd, err := n.PluginCommand(ctx, pluginType, command, pod, stdin)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	runErr := n.netns.Do(func(ns.NetNS) error { return cmd.Run() })
	var exitErr *exec.ExitError
	if errors.As(runErr, &exitErr) {
		perr := &PluginError{ExitCode: exitErr.ExitCode(), Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
			perr.CNI = &cniErr
		}
		return stdout.Bytes(), perr
	}
	if runErr != nil {
		return stdout.Bytes(), fmt.Errorf("running %s %s: %w", pluginType, command, runErr)
	}
	return stdout.Bytes(), nil
}

// PluginCommand prepares, without starting, the process InvokePlugin runs,
// for tests that need to kill a plugin mid-operation. Start it with
// Node.Start so that it runs in the node namespace.
func (n *Node) PluginCommand(ctx context.Context, pluginType, command string, pod *Pod, stdin []byte) (*exec.Cmd, error) {
	path, err := invoke.FindInPath(pluginType, n.cniPath)
	if err != nil {
		return nil, fmt.Errorf("plugin %q (run make build): %w", pluginType, err)
	}
	args := &invoke.Args{Command: command, Path: strings.Join(n.cniPath, ":")}
	if pod != nil {
		args.ContainerID = pod.ContainerID
		args.NetNS = pod.Path()
		args.IfName = pod.IfName
		args.PluginArgs = pod.CNIArgs()
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = args.AsEnv()
	cmd.Stdin = bytes.NewReader(stdin)
	return cmd, nil
}
