package dataplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// bridgeNetfilterSysctls make bridged frames traverse iptables; without
// them pod-to-pod traffic on a bridge would bypass every rule.
var bridgeNetfilterSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

// EnableBridgeNetfilter makes bridged frames traverse iptables in the
// calling thread's network namespace, and fails when it cannot: bridged
// pod traffic would then bypass every rule. The plugin calls it at every
// ADD of a bridged pod (it runs as root on the node; the agent may not be
// allowed to write sysctls).
func EnableBridgeNetfilter() error {
	for _, path := range bridgeNetfilterSysctls {
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("bridge netfilter unavailable (load br_netfilter): %s missing; bridged pod traffic would bypass iptables", path)
			}
			return fmt.Errorf("enabling bridge netfilter: %w", err)
		}
	}
	return nil
}

func checkBridgeNetfilter() error {
	for _, path := range bridgeNetfilterSysctls {
		v, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("bridge netfilter: %w", err)
		}
		if strings.TrimSpace(string(v)) != "1" {
			return fmt.Errorf("bridge netfilter off: %s is %s", path, strings.TrimSpace(string(v)))
		}
	}
	return nil
}

// EnsurePod is the plugin's fallback when the agent does not program a new
// pod: it installs the pod's fixed chains with default-deny policy chains
// (and the base chains and the bridge's coverage if missing), from a full
// read of the tables, in one restore per family. The agent adopts the pod
// from its dispatch comments when it comes back. Repeating it is harmless:
// policy chains that exist keep their content.
func (d *Dataplane) EnsurePod(ctx context.Context, p Pod) error {
	if err := validatePod(p); err != nil {
		return err
	}
	if p.Layout == LayoutBridge {
		if err := EnableBridgeNetfilter(); err != nil {
			return err
		}
	}
	if _, err := d.applyRead(ctx, Target{Pods: []Pod{p}}); err != nil {
		return fmt.Errorf("installing chains of pod %s: %w", podRef(p), err)
	}
	return nil
}

// RemovePod is the plugin's fallback when the agent does not remove a
// pod: it deletes the pod's dispatch rules and its four chains in both
// families. When no pod is left, the base chains and jumps go too, so a
// node without pods holds nothing of podwall.
func (d *Dataplane) RemovePod(ctx context.Context, key string) error {
	if err := ruleset.ValidateChainKey(key); err != nil {
		return err
	}
	if _, err := d.applyRead(ctx, Target{Remove: []string{key}}); err != nil {
		return fmt.Errorf("removing chains of %s: %w", key, err)
	}
	return nil
}

// applyRead reads the kernel and writes what t needs, without trusting or
// keeping a memory (the agent's memory fails its next write and reads
// again).
func (d *Dataplane) applyRead(ctx context.Context, t Target) (wrote bool, err error) {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	err = d.locked(ctx, func() error {
		st, err := d.readState(ctx)
		if err != nil {
			return err
		}
		d.state = nil
		p, err := planApply(st, t, d.log)
		if err != nil {
			return err
		}
		if err := d.execute(ctx, p, &applyTimings{}); err != nil {
			return err
		}
		d.state = p.next
		wrote = !p.empty()
		return nil
	})
	return wrote, err
}

// CheckPod verifies that the pod's chains, dispatch, anti-spoofing and the
// jumps into podwall's chains are in place as Apply writes them. The
// kernel compares the rules (iptables -C), so spelling differences of
// iptables-save do not matter; the fingerprints tell a chain with a rule
// too many.
func (d *Dataplane) CheckPod(ctx context.Context, p Pod) error {
	if err := validatePod(p); err != nil {
		return err
	}
	if p.Layout == LayoutBridge {
		if err := checkBridgeNetfilter(); err != nil {
			return err
		}
	}
	var problems []error
	for _, f := range ruleset.Families() {
		lay, err := layoutOf(p, f)
		if err != nil {
			return err
		}
		proto := iptables.ProtocolIPv4
		if f == ruleset.IPv6 {
			proto = iptables.ProtocolIPv6
		}
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(d.backend.tool(f, "")))
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		var missing []string
		for _, c := range slices.Concat([]string{chainForward, chainInput, chainJudged, chainAdmit, chainEgress, chainAntispoof, chainIngress, chainMisaddressed}, podChainNames(p.Key)) {
			ok, err := ipt.ChainExists("filter", c)
			if err != nil {
				return fmt.Errorf("%s: listing chain %s: %w", f, c, err)
			}
			if !ok {
				missing = append(missing, c)
				problems = append(problems, fmt.Errorf("%s: chain %s missing", f, c))
			}
		}
		if len(missing) > 0 {
			continue
		}
		type want struct {
			chain, what string
			args        ruleset.Rule
		}
		var wants []want
		for _, chain := range sharedChains {
			for _, r := range lay.dispatch[chain] {
				what := "dispatch rule"
				if chain == chainAntispoof {
					what = "anti-spoofing rule"
				}
				wants = append(wants, want{chain, what, r})
			}
		}
		if coveredByBridge(p) {
			antispoof, misaddressed := bridgeCoverage(p.Bridge)
			wants = append(wants, want{chainAntispoof, "anti-spoofing rule", antispoof}, want{chainMisaddressed, "bridge coverage rule", misaddressed})
		}
		wants = append(wants, want{chainForward, "rule", notClaimedRule()})
		for _, j := range baseJumps {
			wants = append(wants, want{j.builtin, "jump", j.args})
		}
		for _, r := range lay.from.Rules {
			what := "rule"
			if strings.Contains(quoteArgs(r), "anti-spoofing") {
				what = "anti-spoofing rule"
			}
			wants = append(wants, want{lay.from.Name, what, r})
		}
		for _, r := range lay.to.Rules {
			wants = append(wants, want{lay.to.Name, "rule", r})
		}
		for _, w := range wants {
			ok, err := ipt.Exists("filter", w.chain, w.args...)
			if err != nil {
				return fmt.Errorf("%s: checking %s: %w", f, w.chain, err)
			}
			if !ok {
				problems = append(problems, fmt.Errorf("%s: %s missing in %s: %s", f, w.what, w.chain, quoteArgs(w.args)))
			}
		}
		t, err := d.save(ctx, f)
		if err != nil {
			return err
		}
		states := chainStates(t)
		for _, c := range []ruleset.Chain{lay.from, lay.to} {
			if _, ok := states[c.Name].upToDate(c); !ok {
				problems = append(problems, fmt.Errorf("%s: %s has %d rules, want the %d of its layout", f, c.Name, states[c.Name].n, len(c.Rules)+1))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("pod %s (%s): %w", podRef(p), p.Key, errors.Join(problems...))
	}
	return nil
}

// Pods lists the attachments whose dispatch rules are in the kernel, as
// their comments describe them, sorted by key.
func (d *Dataplane) Pods(ctx context.Context) ([]Pod, error) {
	tables, err := d.startSaves(ctx)()
	if err != nil {
		return nil, err
	}
	byKey := map[string]Pod{}
	for _, f := range ruleset.Families() {
		if t := tables[f]; t != nil {
			for key, p := range tableStateOf(t, f).pods {
				if _, seen := byKey[key]; !seen {
					byKey[key] = p
				}
			}
		}
	}
	out := make([]Pod, 0, len(byKey))
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		out = append(out, byKey[key])
	}
	return out, nil
}
