package k8senv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// stopTimeout is how long a component gets to exit after SIGTERM before it
// is killed.
const stopTimeout = 20 * time.Second

// process is one cluster component running as a child of the test, inside a
// network namespace, with its output in a log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid once done is closed
}

// startProcess starts path with args inside netns, in its own process group
// (so that a terminal's ^C reaches the test only, which then stops it in
// order), appending its output to logDir/name.log.
func startProcess(netns ns.NetNS, logDir, name, path string, args ...string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	defer logFile.Close() // the child holds its own copy
	cmd := exec.Command(path, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The child inherits the namespace of the thread that forks it. Pdeathsig
	// kills it if the test binary dies before its cleanup (a go test timeout)
	// rather than leaving a cluster running; it fires when the forking thread
	// exits, which ns.Do only lets happen when it could not return the thread
	// to the host namespace.
	err = netns.Do(func(ns.NetNS) error { return cmd.Start() })
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, with a description of how
// and the tail of its log.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.name, p.err, p.logPath, p.logTail(25))
	default:
		return false, nil
	}
}

// stop sends SIGTERM, waits, then SIGKILLs. Stopping an exited process is
// a no-op.
func (p *process) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", p.name, err)
	}
	<-p.done
	return fmt.Errorf("%s ignored SIGTERM for %v and was killed", p.name, stopTimeout)
}

func (p *process) logTail(lines int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// processGroup stops its members in reverse start order.
type processGroup struct {
	mu    sync.Mutex
	procs []*process
}

func (g *processGroup) add(p *process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = append(g.procs, p)
}

// remove takes p out of the group, once stopped on purpose.
func (g *processGroup) remove(p *process) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = slices.DeleteFunc(g.procs, func(q *process) bool { return q == p })
}

// firstExited returns the error of a member that has exited, if any.
func (g *processGroup) firstExited() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		if gone, err := p.exited(); gone {
			return err
		}
	}
	return nil
}

func (g *processGroup) stopAll() error {
	g.mu.Lock()
	procs := g.procs
	g.procs = nil
	g.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].stop())
	}
	return errors.Join(errs...)
}
