package k8senv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// ServeEcho opens, inside the pod, a TCP server (accepts, then closes) and
// a UDP echo server on each port, until the test ends: the servers a
// connectivity matrix probes.
func (p *PodNetNS) ServeEcho(t testing.TB, ports ...int) {
	t.Helper()
	stop, err := p.StartEcho(ports...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// StartEcho is ServeEcho for any goroutine: stop closes the servers and
// waits for them.
func (p *PodNetNS) StartEcho(ports ...int) (stop func(), err error) {
	var closers []io.Closer
	var wg sync.WaitGroup
	stop = func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}
	for _, port := range ports {
		addr := net.JoinHostPort("", strconv.Itoa(port))
		var ln net.Listener
		var pc net.PacketConn
		err := p.Do(func() error {
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
			return nil, fmt.Errorf("pod %s/%s serving %s: %w", p.Namespace, p.Name, addr, err)
		}
		wg.Go(func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return // closed by stop
				}
				conn.Close()
			}
		})
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return // closed by stop
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		})
	}
	return stop, nil
}

// Probe tries one connection from the pod to addr ("ip:port") and returns
// nil when it got through: a TCP handshake completed, or a UDP datagram
// came back from an echo server, before ctx ended.
func (p *PodNetNS) Probe(ctx context.Context, proto corev1.Protocol, addr string) error {
	network := map[corev1.Protocol]string{corev1.ProtocolTCP: "tcp", corev1.ProtocolUDP: "udp"}[proto]
	if network == "" {
		return fmt.Errorf("probing %s: protocol %q unsupported", addr, proto)
	}
	var conn net.Conn
	err := p.Do(func() error {
		var dialer net.Dialer
		var err error
		conn, err = dialer.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	if network == "tcp" {
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	msg := []byte("podwall probe")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("udp %s: echo %q", addr, buf[:n])
	}
	return nil
}
