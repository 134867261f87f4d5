package harness

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// CheckHostUnchanged snapshots the host's network state (links, routes,
// iptables and ipsets, forwarding sysctls) and fails the test if it differs
// once the test's cleanups have run. Call it before NewNode, so that it runs
// after the node's teardown. Namespace mounts are not part of it, so that
// parallel tests do not see each other's nodes: each node checks its own
// removal, and Main checks that none is left when the package's tests end.
func CheckHostUnchanged(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	before, err := hostSnapshot()
	if err != nil {
		t.Fatalf("snapshotting host network state: %v", err)
	}
	t.Cleanup(func() {
		after, err := hostSnapshot()
		if err != nil {
			t.Errorf("snapshotting host network state: %v", err)
			return
		}
		for _, key := range sortedKeys(before, after) {
			if before[key] != after[key] {
				t.Errorf("host %s changed by the test:\nbefore:\n%s\nafter:\n%s", key, before[key], after[key])
			}
		}
	})
}

var (
	iptablesCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	routeExpiry      = regexp.MustCompile(`expires \S+`)
)

// hostSnapshot reads the host's state from the calling goroutine's thread,
// which is in the host namespace: the harness only ever leaves it on
// threads locked inside Do.
func hostSnapshot() (map[string]string, error) {
	snap := map[string]string{}

	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var links []string
	for _, iface := range ifaces {
		links = append(links, iface.Name)
	}
	slices.Sort(links)
	snap["links"] = strings.Join(links, "\n")

	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		value, err := os.ReadFile("/proc/sys/" + key)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("reading sysctl %s: %w", key, err)
		}
		snap["sysctl "+key] = strings.TrimSpace(string(value))
	}

	commands := map[string][]string{
		"ipv4 routes": {"ip", "-4", "route", "show", "table", "all"},
		"ipv6 routes": {"ip", "-6", "route", "show", "table", "all"},
		"iptables":    {"iptables-save"},
		"ip6tables":   {"ip6tables-save"},
		"ipsets":      {"ipset", "list", "-n"},
	}
	for key, args := range commands {
		path, err := lookCommand(args[0])
		if err != nil {
			continue // not installed: nothing of it can change either
		}
		out, err := runHost(path, args[1:]...)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		snap[key] = normalizeSnapshot(out)
	}
	return snap, nil
}

// normalizeSnapshot drops what changes without anyone changing the state:
// iptables-save's comment lines and packet counters, route expiry timers.
func normalizeSnapshot(out string) string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		line = iptablesCounters.ReplaceAllString(line, "")
		lines = append(lines, routeExpiry.ReplaceAllString(line, ""))
	}
	return strings.Join(lines, "\n")
}

func sortedKeys(maps ...map[string]string) []string {
	var keys []string
	for _, m := range maps {
		for k := range m {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}
