package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// run executes a command in the network namespace of the calling thread
// and returns its stdout. The error carries stderr, which is where
// iptables-restore and ipset say which line they refused.
func run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	p, err := start(ctx, stdin, name, args...)
	if err != nil {
		return nil, err
	}
	return p.wait()
}

// process is a command started by start.
type process struct {
	cmd            *exec.Cmd
	desc           string
	stdout, stderr bytes.Buffer
}

// start starts a command in the network namespace of the calling thread:
// the process is forked right here, so only the wait may happen on
// another goroutine. Commands on independent state (the IPv4 and IPv6
// tables) run side by side this way.
func start(ctx context.Context, stdin []byte, name string, args ...string) (*process, error) {
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	p := &process{cmd: exec.CommandContext(ctx, path, args...), desc: name + " " + strings.Join(args, " ")}
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if stdin != nil {
		p.cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", p.desc, err)
	}
	return p, nil
}

func (p *process) wait() ([]byte, error) {
	if err := p.cmd.Wait(); err != nil {
		return p.stdout.Bytes(), fmt.Errorf("%s: %w: %s", p.desc, err, strings.TrimSpace(p.stderr.String()))
	}
	return p.stdout.Bytes(), nil
}

// lookPath finds a command also when PATH lacks the sbin directories, as
// it does for plugins started by some runtimes.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p, err := exec.LookPath(dir + "/" + name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or sbin", name)
}
