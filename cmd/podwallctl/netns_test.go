package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/podwall/podwall/ipam/report"
)

// These tests read real routing tables, in a network namespace of their own:
// the host's routes are never read for a verdict, nor touched.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("real-kernel test needs root, and CI must run it")
	}
	t.Skip("real-kernel test needs root")
}

// nodeNS returns a fresh network namespace standing for the node, removed
// when the test ends, whatever its outcome.
func nodeNS(t *testing.T) ns.NetNS {
	t.Helper()
	requireRoot(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		netns.Close()
		if err := testutils.UnmountNS(netns); err != nil {
			t.Errorf("removing network namespace: %v", err)
		}
	})
	return netns
}

// inNS runs fn on a thread inside netns. fn must not call t.Fatal: it runs
// on another goroutine.
func inNS(t *testing.T, netns ns.NetNS, fn func() error) {
	t.Helper()
	if err := netns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func runInNS(t *testing.T, netns ns.NetNS, args ...string) result {
	t.Helper()
	var r result
	inNS(t, netns, func() error { r = runReal(args...); return nil })
	t.Logf("podwallctl %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// addPodBridge gives the namespace what the bridge plugin sets up: a bridge
// holding the gateway, hence a connected route of exactly the range.
func addPodBridge(name, gatewayCIDR string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge %s: %w", name, err)
	}
	addr, err := netlink.ParseAddr(gatewayCIDR)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("adding %s to %s: %w", gatewayCIDR, name, err)
	}
	return netlink.LinkSetUp(br)
}

// addForeignRoute adds a route to dst through a veth that stands for an
// uplink (a VPN, a corporate LAN): not one of the pod network's devices. A
// veth is used because it exists on every kernel the tests run on.
func addForeignRoute(name, dst string) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "-p"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s: %w", name, err)
	}
	for _, n := range []string{name, name + "-p"} {
		link, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", n, err)
		}
	}
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipnet, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("adding route %s dev %s: %w", dst, name, err)
	}
	return nil
}

func TestCheckSeesForeignRouteOfTheNode(t *testing.T) {
	netns := nodeNS(t)
	conflist := writeFile(t, filepath.Join(t.TempDir(), "10-podnet.conflist"), checkConflist)
	inNS(t, netns, func() error { return addPodBridge("cni0", "100.64.1.1/24") })

	r := runInNS(t, netns, "ipam", "check", "--config", conflist)
	lines := strings.Split(r.stdout, "\n")
	if r.code != exitOK {
		t.Errorf("with only the pod bridge: exit %d, want 0", r.code)
	}
	if !slices.Contains(lines, "info route 100.64.1.0/24 dev cni0 is the pod network's own (bridge of range 100.64.1.0/24)") {
		t.Errorf("the pod bridge's route is not recognised as the pod network's own:\n%s", r.stdout)
	}

	inNS(t, netns, func() error { return addForeignRoute("br-up", "100.64.1.0/28") })
	r = runInNS(t, netns, "ipam", "check", "--config", conflist)
	lines = strings.Split(r.stdout, "\n")
	if r.code != exitFailed {
		t.Errorf("with a foreign route in the active range: exit %d, want 1", r.code)
	}
	for _, want := range []string{
		"CONFLICT active range 100.64.1.0/24 overlaps route 100.64.1.0/28 dev br-up (16 addresses unusable, including gateway 100.64.1.1)",
		"info range 100.64.1.0/24 (active): 175 allocatable addresses (14 more are inside foreign routes)",
		"summary: 1 conflict, 0 warnings",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q", want)
		}
	}
}

func TestCheckDrainingOverlapIsOnlyAWarning(t *testing.T) {
	netns := nodeNS(t)
	conflist := writeFile(t, filepath.Join(t.TempDir(), "10-podnet.conflist"), checkConflist)
	inNS(t, netns, func() error { return addForeignRoute("wg0", "10.244.1.128/25") })
	r := runInNS(t, netns, "ipam", "check", "--config", conflist)
	if r.code != exitOK || !strings.Contains(r.stdout, "warning draining range 10.244.1.0/24 overlaps route 10.244.1.128/25 dev wg0 (128 addresses;") {
		t.Errorf("exit %d, want 0 and a warning", r.code)
	}
}

func TestListSeesForeignRouteOfTheNode(t *testing.T) {
	netns := nodeNS(t)
	dataDir := t.TempDir()
	allocate(t, dataDir, parseConfig(t, "podnet", migrating), containerNames("pod", 20)...) // 100.64.1.2-21
	inNS(t, netns, func() error { return addPodBridge("cni0", "100.64.1.1/24") })

	r := runInNS(t, netns, "ipam", "list", "--data-dir", dataDir, "-o", "json")
	if r.code != exitOK {
		t.Fatalf("exit %d", r.code)
	}
	for _, a := range decodeListing(t, r.stdout).Allocations {
		if a.State != report.StateActive {
			t.Errorf("before the foreign route: %s is %s, want active", a.IP, a.State)
		}
	}

	inNS(t, netns, func() error { return addForeignRoute("br-up", "100.64.1.0/28") })
	r = runInNS(t, netns, "ipam", "list", "--data-dir", filepath.Join(dataDir, "podnet"), "-o", "json")
	if r.code != exitOK {
		t.Fatalf("exit %d", r.code)
	}
	l := decodeListing(t, r.stdout)
	if len(l.Allocations) != 20 {
		t.Fatalf("listed %d allocations, want 20", len(l.Allocations))
	}
	for i, a := range l.Allocations {
		want, detail := report.StateActive, ""
		if i+2 <= 15 {
			want, detail = report.StateForeignRoute, "inside route 100.64.1.0/28 dev br-up"
		}
		if a.IP != fmt.Sprintf("100.64.1.%d", i+2) || a.State != want || a.Detail != detail {
			t.Errorf("row %d: %s %s %q, want 100.64.1.%d %s %q", i, a.IP, a.State, a.Detail, i+2, want, detail)
		}
	}
}
