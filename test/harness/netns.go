package harness

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named namespaces, so `ip netns exec` works
// on ours while debugging a paused test.
const netnsDir = "/run/netns"

// netnsPrefix starts the name of every namespace the harness mounts; the
// process id follows, which lets a later run sweep namespaces of a test
// binary that was killed before its cleanup ran.
const netnsPrefix = "pwtest-"

// createNetNS creates a network namespace bind-mounted at
// /run/netns/pwtest-<pid>-<label>-<random>, with lo up. prepareNetnsDir
// must have run first.
func createNetNS(label string) (ns.NetNS, error) {
	suffix, err := randomHex(4)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(netnsDir, fmt.Sprintf("%s%d-%s-%s", netnsPrefix, os.Getpid(), sanitizeLabel(label), suffix))
	mountPoint, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating netns mount point: %w", err)
	}
	mountPoint.Close()

	if err := unshareAndMount(path); err != nil {
		os.Remove(path)
		return nil, err
	}
	netns, err := ns.GetNS(path)
	if err != nil {
		unmountNetNS(path)
		return nil, fmt.Errorf("opening netns %s: %w", path, err)
	}
	err = netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		destroyNetNS(netns)
		return nil, fmt.Errorf("bringing lo up in %s: %w", path, err)
	}
	return netns, nil
}

// unshareAndMount moves a locked thread into a new network namespace, pins
// the namespace by bind-mounting it at path, and moves the thread back. If it
// cannot move back, the thread stays locked and the runtime discards it.
func unshareAndMount(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("opening current netns: %w", err)
			return
		}
		defer origin.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		mountErr := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if err := unix.Setns(int(origin.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(mountErr, fmt.Errorf("returning to original netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if mountErr != nil {
			mountErr = fmt.Errorf("bind-mounting netns at %s: %w", path, mountErr)
		}
		errc <- mountErr
	}()
	return <-errc
}

// prepareNetnsDir makes /run/netns a shared mount point, as `ip netns add`
// does, so namespace mounts propagate to every mount namespace.
func prepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	// Not a mount point yet: bind it onto itself first.
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", netnsDir, err)
	}
	if err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	return nil
}

// destroyNetNS closes and unmounts a namespace created by createNetNS. The
// kernel frees it, with every link, route and rule inside, once no process
// or socket refers to it any more.
func destroyNetNS(netns ns.NetNS) error {
	path := netns.Path()
	closeErr := netns.Close()
	return errors.Join(closeErr, unmountNetNS(path))
}

func unmountNetNS(path string) error {
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// sweepStaleNetNS removes namespaces left by harness processes that no
// longer exist (killed by a timeout or SIGKILL before their cleanup ran).
func sweepStaleNetNS() error {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	var errs []error
	for _, entry := range entries {
		pid, ok := netnsOwner(entry.Name())
		if !ok || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		errs = append(errs, unmountNetNS(filepath.Join(netnsDir, entry.Name())))
	}
	return errors.Join(errs...)
}

// netnsOwner returns the pid embedded in a harness namespace name.
func netnsOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, netnsPrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil && pid > 0
}

// ownNetNSNames lists the namespaces this process has mounted.
func ownNetNSNames() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	var names []string
	for _, entry := range entries {
		if pid, ok := netnsOwner(entry.Name()); ok && pid == os.Getpid() {
			names = append(names, entry.Name())
		}
	}
	return names, nil
}

// sanitizeLabel keeps namespace names short and safe for `ip netns`.
func sanitizeLabel(label string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(label) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= 32 {
			break
		}
	}
	if b.Len() == 0 {
		return "x"
	}
	return b.String()
}

func randomHex(n int) (string, error) {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return hex.EncodeToString(buf), nil
}
