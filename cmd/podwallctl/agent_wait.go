package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
)

// waitRetryInterval separates attempts to reach an agent that is not
// answering yet or failed to apply.
const waitRetryInterval = 50 * time.Millisecond

func (a *app) wait(flags *flag.FlagSet, args []string) int {
	timeout := flags.Duration("timeout", 10*time.Second, "how long to keep trying")
	if code, done := a.parseLeaf(flags, args); done {
		return code
	}
	if *timeout <= 0 {
		return a.usageError(flags, "--timeout must be positive, not %s", *timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := agentapi.NewClient(a.socket)
	attempts := 0
	var lastErr error
	for {
		attempts++
		// Sync makes the agent read its sources now, so everything written
		// before this call is in the apply it answers after.
		st, err := c.Sync(ctx)
		if err == nil && !st.Ready {
			err = errors.New("agent answered but is not ready")
		}
		if err == nil {
			for _, p := range st.Problems {
				fmt.Fprintf(a.stderr, "warning: %s\n", p)
			}
			fmt.Fprintf(a.stdout, "enforced: generation %d, %d pods (%d programmed), %d policies, mode %s\n",
				st.Generation, len(st.Pods), programmed(st.Pods), st.Policies, st.Mode)
			return exitOK
		}
		if ctx.Err() == nil || lastErr == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return a.fail("wait: not enforced within %s (%d attempts): %v", *timeout, attempts, lastErr)
		case <-time.After(waitRetryInterval):
		}
	}
}

func programmed(pods []agentapi.PodStatus) int {
	n := 0
	for _, p := range pods {
		if p.Programmed {
			n++
		}
	}
	return n
}
