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

// ServeTCP listens on port (all addresses, both families) inside the pod
// and answers each connection with the pod's "namespace/name" and a newline.
// The listener is closed when the test ends.
func (p *Pod) ServeTCP(t testing.TB, port int) {
	t.Helper()
	var listener net.Listener
	err := p.Do(func() error {
		var err error
		listener, err = net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listening on %d in pod %s/%s: %v", port, p.Namespace, p.Name, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		greeting := []byte(p.Namespace + "/" + p.Name + "\n")
		for {
			conn, err := listener.Accept()
			if err != nil {
				return // closed at cleanup
			}
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write(greeting)
			conn.Close()
		}
	}()
	t.Cleanup(func() {
		listener.Close()
		wg.Wait()
	})
}

// ConnectTCP connects from inside the pod to addr ("ip:port") and returns
// the line the peer sends first: "namespace/name" for a ServeTCP peer. The
// context bounds the whole exchange.
func (p *Pod) ConnectTCP(ctx context.Context, addr string) (string, error) {
	var conn net.Conn
	err := p.Do(func() error {
		var dialer net.Dialer
		var err error
		conn, err = dialer.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("pod %s/%s connecting to %s: %w", p.Namespace, p.Name, addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(deadline)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("pod %s/%s reading from %s: %w", p.Namespace, p.Name, addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
