package enforcementtest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// Concurrent ADDs and DELs serialise on the state lock: one set of base
// chains and jumps, one dispatch rule per pod and family, one drop
// per bridge and family for the ports no dispatch claims, nothing left.
func TestConcurrentAddDel(t *testing.T) {
	e := newEnv(t, "bridge", "1.1.0", "100.64.56.0/24")
	const n = 8
	pods := make([]*harness.Pod, n)
	for i := range pods {
		pods[i] = e.node.NewPod(t, "x", fmt.Sprintf("p%d", i))
	}
	parallel := func(op string, fn func(*harness.Pod) error) {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, p := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = fn(p)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s p%d: %v", op, i, err)
			}
		}
	}
	ctx := ctxFor(t, 2*time.Minute)
	parallel("ADD", func(p *harness.Pod) error { _, err := e.nw.Add(ctx, p); return err })
	for _, want := range []struct {
		match string
		count int
	}{
		{"-A FORWARD -m comment --comment \"podwall: pod traffic\"", 2},
		{"-A INPUT -m comment", 2},
		{":PODWALL-FORWARD ", 2},
		{"-A PODWALL-EGRESS -s ", n},
		{"-A PODWALL-INGRESS -d ", n},
		// Bridged pods are covered by their bridge's drop in both
		// families, not by a rule each.
		{"-A PODWALL-ANTISPOOF -i cni0 ", 2},
		{"-A PODWALL-MISADDRESSED -o cni0 ", 2},
		{"-A PODWALL-ANTISPOOF -m physdev", 0},
		{"-A PODWALL-MISADDRESSED -m physdev", 0},
	} {
		if got := e.ourRulesWith(want.match); got != want.count {
			t.Errorf("%d lines with %q, want %d:\n%s", got, want.match, want.count, strings.Join(e.ourRules(), "\n"))
		}
	}
	parallel("CHECK", func(p *harness.Pod) error { return e.nw.Check(ctx, p) })
	parallel("DEL", func(p *harness.Pod) error { return e.nw.Del(ctx, p) })
	if left := e.ourRules(); len(left) > 0 {
		t.Errorf("left after DEL of all pods:\n%s", strings.Join(left, "\n"))
	}
}
