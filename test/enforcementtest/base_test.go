package enforcementtest

import (
	"strings"
	"testing"
	"time"
)

// Someone flushing FORWARD removes the jump into podwall's chains, which
// would leave every pod of the node open: CHECK reports it, and the agent
// puts it back within seconds, loudly.
func TestAgentRestoresTheJumps(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.62.0/24")
	a, _ := e.add("a")
	b, ipB := e.add("b")
	b.ServeTCP(t, 8080)
	agent := e.startAgent(t.TempDir())
	defer agent.stop(t)
	e.mustWait()
	target := addr(ipB, 8080)
	denied(t, a, target)

	for _, cmd := range []string{"iptables", "ip6tables"} {
		e.node.MustRun(t, cmd, "-w", "-F", "FORWARD")
	}
	if err := e.nw.Check(ctxFor(t, time.Minute), a); err == nil || !strings.Contains(err.Error(), "FORWARD") {
		t.Errorf("CHECK without the FORWARD jump: %v", err)
	}
	jumpBack := func() bool {
		for _, cmd := range []string{"iptables", "ip6tables"} {
			if !strings.Contains(e.node.MustRun(t, cmd, "-w", "-S", "FORWARD"), "-j PODWALL-FORWARD") {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !jumpBack() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !jumpBack() {
		t.Fatal("the agent did not restore the FORWARD jumps within 15s")
	}
	denied(t, a, target)
	if err := e.nw.Check(ctxFor(t, time.Minute), a); err != nil {
		t.Errorf("CHECK after the agent restored the jumps: %v", err)
	}
}
