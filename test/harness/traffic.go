package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// InNetNS runs code inside a network namespace: a harness Pod, or a pod a
// real kubelet made (test/k8s).
type InNetNS interface {
	Do(fn func() error) error
}

// ServeTCP listens on port (all addresses, both families) inside the pod
// and answers each connection with the pod's "namespace/name" and a newline.
// The listener is closed when the test ends.
func (p *Pod) ServeTCP(t testing.TB, port int) {
	t.Helper()
	ServeTCPIn(t, p, p.Namespace+"/"+p.Name, port)
}

// ConnectTCP connects from inside the pod to addr ("ip:port") and returns
// the line the peer sends first: "namespace/name" for a ServeTCP peer. The
// context bounds the whole exchange.
func (p *Pod) ConnectTCP(ctx context.Context, addr string) (string, error) {
	return ConnectTCPFrom(ctx, p, p.Namespace+"/"+p.Name, addr)
}

// ServeTCPIn is ServeTCP for any namespace: each connection gets name and a
// newline.
func ServeTCPIn(t testing.TB, where InNetNS, name string, port int) {
	t.Helper()
	var listener net.Listener
	err := where.Do(func() error {
		var err error
		listener, err = net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listening on %d in pod %s: %v", port, name, err)
	}
	greeting := []byte(name + "\n")
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return // closed at cleanup
			}
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write(greeting)
			conn.Close()
		}
	})
	t.Cleanup(func() {
		listener.Close()
		wg.Wait()
	})
}

// ConnectTCPFrom is ConnectTCP for any namespace; name says whose it is in
// errors.
func ConnectTCPFrom(ctx context.Context, where InNetNS, name, addr string) (string, error) {
	var conn net.Conn
	err := where.Do(func() error {
		var dialer net.Dialer
		var err error
		conn, err = dialer.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("pod %s connecting to %s: %w", name, addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(deadline)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("pod %s reading from %s: %w", name, addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
