package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner starts the commands the dataplane runs (iptables-restore,
// iptables-save, ipset...) in the network namespace of the calling thread.
// The real one forks; a fake one interprets them, so that what Apply
// writes, and in which order, is tested without a kernel.
type Runner interface {
	// Start starts a command with stdin (nil: none). The process is
	// started on the calling thread, so only the wait may happen on
	// another goroutine: commands on independent state (the IPv4 and IPv6
	// tables) run side by side this way.
	Start(ctx context.Context, stdin []byte, name string, args ...string) (Process, error)
}

// Process is a started command.
type Process interface {
	// Wait returns its stdout; the error carries its stderr, which is
	// where iptables-restore and ipset say which line they refused.
	Wait() ([]byte, error)
}

// ErrCommandNotFound is returned by a Runner for a command it cannot find.
var ErrCommandNotFound = errors.New("command not found")

// execRunner runs real commands.
type execRunner struct{}

type execProcess struct {
	cmd            *exec.Cmd
	desc           string
	stdout, stderr bytes.Buffer
}

func (execRunner) Start(ctx context.Context, stdin []byte, name string, args ...string) (Process, error) {
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	p := &execProcess{cmd: exec.CommandContext(ctx, path, args...), desc: name + " " + strings.Join(args, " ")}
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

func (p *execProcess) Wait() ([]byte, error) {
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
	return "", fmt.Errorf("%s: %w in PATH or sbin", name, ErrCommandNotFound)
}

// runWith runs a command to completion.
func runWith(ctx context.Context, r Runner, stdin []byte, name string, args ...string) ([]byte, error) {
	p, err := r.Start(ctx, stdin, name, args...)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

func (d *Dataplane) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	return runWith(ctx, d.runner, stdin, name, args...)
}
