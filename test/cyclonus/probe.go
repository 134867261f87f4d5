package cyclonus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// NetNS is a pod's network namespace, entered by the test itself (a
// harness pod, or the namespace of a pod the kubelet created).
type NetNS interface {
	// Do runs fn on an OS thread locked into the namespace.
	Do(fn func() error) error
}

// Serve opens a pod's servers: on Ports, TCP accepts and closes, UDP
// echoes. The sockets are created inside the pod and keep its namespace.
// stop closes them and waits for their goroutines.
func Serve(pod NetNS) (stop func(), err error) {
	var closers []io.Closer
	var wg sync.WaitGroup
	stop = func() {
		for _, c := range closers {
			c.Close()
		}
		closers = nil
		wg.Wait()
	}
	for _, port := range Ports {
		addr := net.JoinHostPort("", strconv.Itoa(int(port)))
		var ln net.Listener
		var pc net.PacketConn
		err := pod.Do(func() error {
			var err error
			if ln, err = net.Listen("tcp", addr); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp", addr)
			return err
		})
		if ln != nil {
			closers = append(closers, ln)
		}
		if pc != nil {
			closers = append(closers, pc)
		}
		if err != nil {
			stop()
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				conn, err := ln.Accept()
				if err != nil {
					return // closed
				}
				conn.Close()
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return // closed
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}()
	}
	return stop, nil
}

var errNoReply = errors.New("no reply")

// Connect tries one connection from a pod and says whether it got through:
// a TCP handshake completed, or a UDP datagram echoed, within timeout. The
// error says why not.
func Connect(from NetNS, to netip.Addr, port int, proto corev1.Protocol, timeout time.Duration) (bool, error) {
	addr := netip.AddrPortFrom(to, uint16(port)).String()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	switch proto {
	case corev1.ProtocolTCP:
		var conn net.Conn
		err := from.Do(func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		if err != nil {
			return false, err
		}
		conn.Close()
		return true, nil
	case corev1.ProtocolUDP:
		var conn net.Conn
		err := from.Do(func() error {
			var err error
			conn, err = net.Dial("udp", addr)
			return err
		})
		if err != nil {
			return false, err
		}
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		_ = conn.SetDeadline(deadline)
		msg := []byte("cyclonus probe")
		if _, err := conn.Write(msg); err != nil {
			return false, err
		}
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if err != nil {
			return false, err
		}
		if string(buf[:n]) != string(msg) {
			return false, fmt.Errorf("%w: echo %q", errNoReply, buf[:n])
		}
		return true, nil
	}
	return false, errors.New("unsupported protocol " + string(proto))
}

// Probe is one real connection and the matcher's verdict on it.
type Probe struct {
	From   NetNS
	To     netip.Addr
	Target Target
	Want   bool // the matcher allows it

	Got     bool  // it got through
	Err     error // why not
	Retried bool  // the quick verdict differed from Want
}

// ProbeTiming says how probes are run: Workers at once, each given Quick
// and, when its verdict differs from the matcher's, tried again with Slow
// before it counts, so that a loaded machine does not turn a slow allow
// into a deny.
type ProbeTiming struct {
	Workers     int
	Quick, Slow time.Duration
}

// Run tries every probe.
func (pt ProbeTiming) Run(probes []*Probe) {
	work := make(chan *Probe)
	var wg sync.WaitGroup
	for range min(pt.Workers, len(probes)) {
		wg.Go(func() {
			for p := range work {
				p.Got, p.Err = Connect(p.From, p.To, p.Target.Port, p.Target.Protocol, pt.Quick)
				if p.Got != p.Want {
					p.Retried = true
					p.Got, p.Err = Connect(p.From, p.To, p.Target.Port, p.Target.Protocol, pt.Slow)
				}
			}
		})
	}
	for _, p := range probes {
		work <- p
	}
	close(work)
	wg.Wait()
	// A probe the matcher allows that still failed may have lost to the
	// load of the parallel pass (a timeout is all a deny looks like); it is
	// tried again alone, with time to spare. A connection that got through
	// is never retried: no load makes a denied pair connect.
	for _, p := range probes {
		for try := 0; try < 2 && p.Want && !p.Got; try++ {
			p.Retried = true
			p.Got, p.Err = Connect(p.From, p.To, p.Target.Port, p.Target.Protocol, 3*pt.Slow)
		}
	}
}
