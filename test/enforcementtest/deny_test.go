package enforcementtest

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// With no agent, pods are attached default-deny: ADD succeeds at once, no
// pod reaches another, the node still reaches them, and DEL leaves nothing.
func TestNoAgentDefaultDeny(t *testing.T) {
	for _, tc := range []struct{ layout, version, subnet string }{
		{"bridge", "1.1.0", "100.64.40.0/24"},
		{"ptp", "1.1.0", "100.64.41.0/24"},
		{"bridge", "0.4.0", "100.64.42.0/24"},
		{"ptp", "1.0.0", "100.64.43.0/24"},
	} {
		t.Run(tc.layout+"-"+tc.version, func(t *testing.T) {
			e := newEnv(t, tc.layout, tc.version, tc.subnet)
			a, _ := e.add("a")
			b := e.node.NewPod(t, "x", "b")
			b.ServeTCP(t, 8080)
			start := time.Now()
			res, err := e.nw.Add(ctxFor(t, time.Minute), b)
			if err != nil {
				t.Fatalf("ADD b: %v", err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("ADD without agent took %v", took)
			}
			ipB := firstV4(t, res)
			target := addr(ipB, 8080)

			denied(t, a, target)
			e.nodeReaches(target, "x/b")
			if err := e.nw.Check(ctxFor(t, time.Minute), b); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			// What the agent would do: a can now reach b, so the denial
			// above was podwall's.
			e.open(a, b)
			reaches(t, a, target, "x/b")

			for _, p := range []string{"a", "b"} {
				pod := a
				if p == "b" {
					pod = b
				}
				if err := e.nw.Del(ctxFor(t, time.Minute), pod); err != nil {
					t.Fatalf("DEL %s: %v", p, err)
				}
				if err := e.nw.Del(ctxFor(t, time.Minute), pod); err != nil {
					t.Fatalf("second DEL %s: %v", p, err)
				}
			}
			if left := e.ourRules(); len(left) > 0 {
				t.Errorf("left after DEL of all pods:\n%s", strings.Join(left, "\n"))
			}
		})
	}
}

// An agent that accepts connections but never answers delays ADD by at
// most agentTimeout.
func TestHungAgentBoundsAdd(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.44.0/24")
	l, err := net.Listen("unix", e.node.Dir+"/agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never answered
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	start := time.Now()
	_, _ = e.add("a")
	took := time.Since(start)
	if took < agentTimeout || took > agentTimeout+2*time.Second {
		t.Errorf("ADD with a hung agent took %v, want about %v", took, agentTimeout)
	}
	t.Logf("ADD with a hung agent took %v", took)
}

// Connections attempted right after ADD returns, in both directions, meet
// the default-deny chains.
func TestFirstPacket(t *testing.T) {
	for _, layout := range []string{"bridge", "ptp"} {
		t.Run(layout, func(t *testing.T) {
			e := newEnv(t, layout, "1.1.0", map[string]string{"bridge": "100.64.45.0/24", "ptp": "100.64.46.0/24"}[layout])
			a, ipA := e.add("a")
			a.ServeTCP(t, 8080)
			b := e.node.NewPod(t, "x", "b")
			b.ServeTCP(t, 8080) // listening before its network exists
			res, err := e.nw.Add(ctxFor(t, time.Minute), b)
			returned := time.Now()
			if err != nil {
				t.Fatal(err)
			}
			ipB := firstV4(t, res)
			type attempt struct {
				from, to string
				err      error
				started  time.Duration
			}
			results := make(chan attempt, 2)
			try := func(from *harness.Pod, name, target string) {
				started := time.Since(returned)
				_, err := connect(from, target, denyWait)
				results <- attempt{from: name, to: target, err: err, started: started}
			}
			go try(a, "a", addr(ipB, 8080))
			go try(b, "b", addr(ipA, 8080))
			for range 2 {
				r := <-results
				if r.started > 10*time.Millisecond {
					t.Errorf("attempt %s->%s started %v after ADD returned", r.from, r.to, r.started)
				}
				if r.err == nil {
					t.Errorf("first packet %s->%s allowed", r.from, r.to)
				}
			}
			e.open(a, b)
			reaches(t, a, addr(ipB, 8080), "x/b")
		})
	}
}
