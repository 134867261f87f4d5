package conformance_test

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/harness"
	networkingv1 "k8s.io/api/networking/v1"
)

// This kernel has no SCTP sockets (no CONFIG_IP_SCTP), so no SCTP
// association can be set up. What podwall's SCTP rules decide is whether an
// SCTP packet passes, and that is proven with raw IP sockets of protocol
// 132: the source pod sends a hand-built SCTP INIT (common header with
// verification tag 0, INIT chunk, CRC32c), the destination pod reads raw
// SCTP packets, and a probe counts as allowed when its INIT, recognised by
// its initiate tag, arrives. Conntrack tracks the INIT as a new SCTP
// association (a packet it finds invalid, for a bad checksum say, would be
// dropped by the INVALID rule, which the allowed probes rule out).

const sctpPolicies = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp-in, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{protocol: SCTP, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - ports: [{protocol: SCTP, port: serve-81-sctp}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out-anywhere, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in-from-anywhere, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
`

// TestSCTPRawPackets checks SCTP verdicts against cyclonus' matcher in both
// modes: an ingress policy allowing SCTP/80 from x/a to y/b, an egress
// policy allowing x/c out on the named port serve-81-sctp only, and (so that
// deny mode has something allowed) x/a out to anywhere and y/a open to all.
func TestSCTPRawPackets(t *testing.T) {
	for _, mode := range []policy.Mode{policy.ModeKubernetes, policy.ModeDeny} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, mode)
			c := cyclonus.NewCluster()
			for _, doc := range splitYAML(sctpPolicies) {
				var np networkingv1.NetworkPolicy
				if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
					t.Fatal(err)
				}
				c.Policies = append(c.Policies, &np)
			}
			e.reconcile(c)
			oracle := c.Oracle(e.deny)

			sinks := map[*livePod]*sctpSink{}
			for _, lp := range e.pods {
				s, err := listenSCTP(lp.pod)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.close)
				sinks[lp] = s
			}
			pairs := [][2]string{
				{"x/a", "y/b"}, {"x/b", "y/b"}, {"z/a", "y/b"}, {"x/c", "y/a"}, {"x/c", "y/b"}, {"x/c", "z/c"}, {"y/a", "x/c"}, {"x/a", "z/b"},
			}
			var allowed, denied int
			tag := uint32(0x5c7b0000)
			for _, pair := range pairs {
				from, to := e.pods[pair[0]], e.pods[pair[1]]
				for _, port := range cyclonus.Ports {
					tag++
					want := oracle.IsTrafficAllowed(sctpTraffic(c, from, to, int(port))).IsAllowed()
					got, err := sendINIT(from.pod, to.ip, uint16(port), tag, sinks[to], want)
					if err != nil {
						t.Fatal(err)
					}
					if want {
						allowed++
					} else {
						denied++
					}
					if got != want {
						t.Errorf("%s mode: SCTP INIT %s (%s) -> %s (%s) port %d: arrived=%t, matcher allows=%t\n%s%s",
							mode, from.ref(), from.ip, to.ref(), to.ip, port, got, want,
							e.chains(from, "F", "OUT"), e.chains(to, "T", "IN"))
					}
				}
			}
			t.Logf("%s mode: %d SCTP INITs that policy allows arrived, %d that it denies did not", mode, allowed, denied)
			if allowed == 0 || denied == 0 {
				t.Errorf("the matcher allowed %d and denied %d: the comparison proves nothing", allowed, denied)
			}
		})
	}
}

func sctpTraffic(c *cyclonus.Cluster, from, to *livePod, port int) *matcher.Traffic {
	return &matcher.Traffic{
		Source:           c.Peer(c.Pod(from.ns, from.name), from.ip.String()),
		Destination:      c.Peer(c.Pod(to.ns, to.name), to.ip.String()),
		ResolvedPort:     port,
		ResolvedPortName: fmt.Sprintf("serve-%d-sctp", port),
		Protocol:         corev1.ProtocolSCTP,
	}
}

func splitYAML(s string) []string {
	var out []string
	for _, doc := range strings.Split(s, "\n---\n") {
		if strings.TrimSpace(doc) != "" {
			out = append(out, doc)
		}
	}
	return out
}

// sctpSink reads the raw SCTP packets a pod receives and remembers the
// initiate tags of the INIT chunks among them.
type sctpSink struct {
	conn *net.IPConn
	wg   sync.WaitGroup

	mu   sync.Mutex
	tags map[uint32]bool
	seen chan struct{} // signalled on every INIT
}

func listenSCTP(pod *harness.Pod) (*sctpSink, error) {
	var conn *net.IPConn
	err := pod.Do(func() error {
		var err error
		conn, err = net.ListenIP("ip4:132", &net.IPAddr{IP: net.IPv4zero})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw SCTP socket in %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	s := &sctpSink{conn: conn, tags: map[uint32]bool{}, seen: make(chan struct{}, 1)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf) // the IPv4 header is stripped
			if err != nil {
				return
			}
			pkt := buf[:n]
			if len(pkt) < 20 || pkt[12] != sctpChunkINIT {
				continue
			}
			s.mu.Lock()
			s.tags[binary.BigEndian.Uint32(pkt[16:20])] = true
			s.mu.Unlock()
			select {
			case s.seen <- struct{}{}:
			default:
			}
		}
	}()
	return s, nil
}

func (s *sctpSink) has(tag uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tags[tag]
}

func (s *sctpSink) close() {
	s.conn.Close()
	s.wg.Wait()
}

const sctpChunkINIT = 1

// sctpINIT builds an SCTP packet holding one INIT chunk (RFC 9260 3.1 and
// 3.3.2), with the CRC32c checksum SCTP stores little-endian.
func sctpINIT(srcPort, dstPort uint16, tag uint32) []byte {
	pkt := make([]byte, 12+20)
	binary.BigEndian.PutUint16(pkt[0:], srcPort)
	binary.BigEndian.PutUint16(pkt[2:], dstPort)
	// verification tag 0: an INIT carries none yet; checksum filled below
	chunk := pkt[12:]
	chunk[0] = sctpChunkINIT
	binary.BigEndian.PutUint16(chunk[2:], 20)     // chunk length
	binary.BigEndian.PutUint32(chunk[4:], tag)    // initiate tag
	binary.BigEndian.PutUint32(chunk[8:], 65536)  // advertised receiver window
	binary.BigEndian.PutUint16(chunk[12:], 1)     // outbound streams
	binary.BigEndian.PutUint16(chunk[14:], 1)     // inbound streams
	binary.BigEndian.PutUint32(chunk[16:], tag^1) // initial TSN
	binary.LittleEndian.PutUint32(pkt[8:], crc32.Checksum(pkt, crc32.MakeTable(crc32.Castagnoli)))
	return pkt
}

// sendINIT sends an INIT from a pod and says whether the sink saw it: an
// expected arrival is waited for up to a second, a drop is declared after
// denyWait (a drop that should have been an arrival is reported either way).
func sendINIT(from *harness.Pod, to netip.Addr, port uint16, tag uint32, sink *sctpSink, wantArrival bool) (bool, error) {
	var conn *net.IPConn
	err := from.Do(func() error {
		var err error
		conn, err = net.ListenIP("ip4:132", &net.IPAddr{IP: net.IPv4zero})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("raw SCTP socket in %s/%s: %w", from.Namespace, from.Name, err)
	}
	defer conn.Close()
	if _, err := conn.WriteTo(sctpINIT(40000+uint16(tag%20000), port, tag), &net.IPAddr{IP: to.AsSlice()}); err != nil {
		return false, fmt.Errorf("sending SCTP INIT from %s/%s: %w", from.Namespace, from.Name, err)
	}
	wait := 400 * time.Millisecond
	if wantArrival {
		wait = time.Second
	}
	deadline := time.After(wait)
	for !sink.has(tag) {
		select {
		case <-sink.seen:
		case <-deadline:
			return sink.has(tag), nil
		}
	}
	return true, nil
}
