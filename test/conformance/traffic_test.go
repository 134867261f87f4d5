package conformance_test

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

	"github.com/podwall/podwall/test/cyclonus"
	"github.com/podwall/podwall/test/harness"
)

// serve opens the pod's servers: on ports 80 and 81, TCP accepts and
// closes, UDP echoes. The sockets are created inside the pod and keep its
// namespace. stop closes them and waits for their goroutines.
func serve(pod *harness.Pod) (stop func(), err error) {
	var closers []io.Closer
	var wg sync.WaitGroup
	stop = func() {
		for _, c := range closers {
			c.Close()
		}
		closers = nil
		wg.Wait()
	}
	for _, port := range cyclonus.Ports {
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

// probe tries one connection from a pod and says whether it got through:
// a TCP handshake completed, or a UDP datagram echoed, within timeout.
// The error says why not.
func probe(from *harness.Pod, to netip.Addr, port int, proto corev1.Protocol, timeout time.Duration) (bool, error) {
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
