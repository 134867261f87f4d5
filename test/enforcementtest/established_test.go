package enforcementtest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/test/harness"
)

// udpEcho answers every datagram on port inside the pod with the same
// bytes, until the test ends.
func udpEcho(t *testing.T, p *harness.Pod, port int) {
	t.Helper()
	var conn net.PacketConn
	if err := p.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", net.JoinHostPort("", strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatalf("UDP echo in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteTo(buf[:n], from)
		}
	}()
}

// udpExchange sends one datagram from the pod's source port sport to dst
// and reports whether it was echoed within wait.
func udpExchange(t *testing.T, p *harness.Pod, sport int, dst netip.AddrPort, wait time.Duration) bool {
	t.Helper()
	echoed := false
	err := p.Do(func() error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: sport}}
		conn, err := d.Dial("udp4", dst.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("probe")); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 16)
		if _, err := conn.Read(buf); err == nil {
			echoed = true
		} else if ne, isNet := errors.AsType[net.Error](err); !isNet || !ne.Timeout() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("UDP from %s:%d to %s: %v", p.Name, sport, dst, err)
	}
	return echoed
}

// A connection admitted under one policy is judged again when the policy
// narrows: a datagram on the 5-tuple of an admitted UDP flow, whose
// conntrack entry lives on, is dropped once the new policy denies it. The
// datagrams reuse one source port on purpose: that is what a client
// socket picking a recently used ephemeral port does.
func TestNarrowedPolicyStopsAdmittedConnections(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.57.0/24")
	client, _ := e.add("client")
	server, serverIP := e.add("server")
	udpEcho(t, server, 80)
	dst := netip.AddrPortFrom(serverIP, 80)

	var pods []dataplane.Pod
	e.withDataplane(func(ctx context.Context, d *dataplane.Dataplane) (err error) {
		pods, err = d.Pods(ctx)
		return err
	})
	if len(pods) != 2 {
		t.Fatalf("pods in the kernel: %+v", pods)
	}
	// open: everything passes; closed: the server's ingress denies all.
	policyFor := func(openServer bool) *ruleset.Desired {
		d := &ruleset.Desired{}
		for _, p := range pods {
			in, out := "PODWALL-IN-"+p.Key, "PODWALL-OUT-"+p.Key
			ingress := []ruleset.Rule{{"-j", "RETURN"}}
			if p.Key == key(server) && !openServer {
				ingress = []ruleset.Rule{{"-m", "comment", "--comment", "test: server denies all", "-j", "DROP"}}
			}
			d.Chains = append(d.Chains,
				ruleset.Chain{Family: ruleset.IPv4, Name: in, Direction: ruleset.Ingress, Rules: ingress},
				ruleset.Chain{Family: ruleset.IPv4, Name: out, Direction: ruleset.Egress, Rules: []ruleset.Rule{{"-j", "RETURN"}}})
		}
		return d
	}
	apply := func(open bool) {
		t.Helper()
		e.withDataplane(func(ctx context.Context, d *dataplane.Dataplane) error {
			_, err := d.Apply(ctx, dataplane.Target{Pods: pods, Policy: policyFor(open)})
			return err
		})
	}

	const sport = 40123
	apply(true)
	var ok bool
	for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); {
		ok = udpExchange(t, client, sport, dst, 300*time.Millisecond)
	}
	if !ok {
		t.Fatal("open policy: no echo")
	}
	apply(false)
	if udpExchange(t, client, sport, dst, 500*time.Millisecond) {
		t.Error("the narrowed policy let a datagram of an admitted flow through")
	}
	entry := e.node.MustRun(t, "conntrack", "-L", "-p", "udp", "--orig-port-src", strconv.Itoa(sport))
	if !strings.Contains(entry, "sport="+strconv.Itoa(sport)) {
		t.Errorf("the flow's conntrack entry is gone, so this proves nothing:\n%s", entry)
	}
	for _, other := range []int{sport + 1, sport + 2} {
		if udpExchange(t, client, other, dst, 300*time.Millisecond) {
			t.Errorf("a new flow from port %d passed the narrowed policy", other)
		}
	}
	apply(true)
	ok = false
	for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
		ok = udpExchange(t, client, sport, dst, 300*time.Millisecond)
	}
	if !ok {
		t.Error("reopened: the flow stays denied")
	}
}
