package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
)

func (a *app) status(flags *flag.FlagSet, args []string) int {
	output := flags.String("o", "table", "output format: table or json")
	timeout := flags.Duration("timeout", 5*time.Second, "how long to wait for the agent's answer")
	if code, done := a.parseLeaf(flags, args); done {
		return code
	}
	if *output != "table" && *output != "json" {
		return a.usageError(flags, "-o must be table or json, not %q", *output)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	st, err := agentapi.NewClient(a.socket).Status(ctx)
	if err != nil {
		return a.fail("status: %v", err)
	}
	if *output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return a.fail("status: %v", err)
		}
	} else {
		writeStatus(a.stdout, st)
	}
	if !st.Ready {
		// The DaemonSet's readiness probe: an agent that answers but has not
		// synced and applied yet is not ready.
		return a.fail("status: the agent is not ready")
	}
	return exitOK
}

func writeStatus(w io.Writer, st agentapi.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "no (no policy applied yet)"
	}
	fmt.Fprintf(tw, "Ready:\t%s\n", ready)
	fmt.Fprintf(tw, "Default policy:\t%s\n", st.Mode)
	last := "never"
	if !st.LastApply.IsZero() {
		last = st.LastApply.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(tw, "Generation:\t%d (last apply %s)\n", st.Generation, last)
	if st.LastError != "" {
		fmt.Fprintf(tw, "Last error:\t%s\n", st.LastError)
	}
	fmt.Fprintf(tw, "Policies:\t%d\n", st.Policies)
	fmt.Fprintf(tw, "In the kernel:\t%d chains, %d rules, %d sets, %d set entries\n",
		st.Stats.Chains, st.Stats.Rules, st.Stats.Sets, st.Stats.SetEntries)
	fmt.Fprintf(tw, "Pods:\t%d (%d programmed)\n", len(st.Pods), programmed(st.Pods))
	tw.Flush()

	if len(st.Pods) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tPOD\tKEY\tIPS\tPROGRAMMED")
		for _, p := range st.Pods {
			ips := strings.Join(p.IPs, ",")
			if ips == "" {
				ips = "-"
			}
			prog := "yes"
			if !p.Programmed {
				prog = "no (default deny)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", orDash(p.Namespace), orDash(p.Name), p.Key, ips, prog)
		}
		tw.Flush()
	}
	if len(st.Problems) > 0 {
		fmt.Fprintf(w, "\nProblems (%d):\n", len(st.Problems))
		for _, p := range st.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
