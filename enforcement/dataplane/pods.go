package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// bridgeNetfilterSysctls make bridged frames traverse iptables; without
// them pod-to-pod traffic on a bridge would bypass every rule.
var bridgeNetfilterSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

func enableBridgeNetfilter() error {
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

// EnsurePod installs the pod's default-deny chains, anti-spoofing and
// dispatch, creating the shared base chains if needed, in one restore per
// family. Repeating it is harmless: policy chains that exist keep the
// agent's content, and dispatch rules are not duplicated.
func (d *Dataplane) EnsurePod(ctx context.Context, p Pod) error {
	if err := validatePod(p); err != nil {
		return err
	}
	if p.Layout == LayoutBridge {
		if err := enableBridgeNetfilter(); err != nil {
			return err
		}
	}
	scripts := map[ruleset.Family]func(*table) (*script, error){}
	for _, f := range ruleset.Families() {
		fromRules, err := fromPodRules(p, f)
		if err != nil {
			return err
		}
		toRules := toPodRules(p, f)
		scripts[f] = func(t *table) (*script, error) {
			s := &script{}
			ensureBase(t, s, f)
			in, out := policyChains(p.Key)
			s.declare(fromPodChain(p.Key))
			s.declare(toPodChain(p.Key))
			for _, c := range []string{in, out} {
				if !t.has(c) {
					s.declare(c)
					s.rule("-A", c, defaultDenyRule(p))
				}
			}
			for _, r := range fromRules {
				s.rule("-A", fromPodChain(p.Key), r)
			}
			for _, r := range toRules {
				s.rule("-A", toPodChain(p.Key), r)
			}
			dispatch := dispatchRules(p, f)
			for _, chain := range sharedChains {
				ensureDispatch(t, s, chain, p, dispatch[chain])
			}
			return s, nil
		}
	}
	return d.locked(ctx, func() error {
		return d.journaled(opEnsure, p.Key, func() error {
			// The usual case, a new pod on a node with pods, needs no
			// read of the tables: one restore per family, which fails,
			// changing nothing, unless the base chains are there and the
			// pod's are not.
			fresh := map[ruleset.Family]*script{}
			for _, f := range ruleset.Families() {
				s, err := freshPodScript(p, f)
				if err != nil {
					return err
				}
				fresh[f] = s
			}
			freshErrs := d.restoreFamilies(ctx, fresh)
			for _, f := range ruleset.Families() {
				if freshErrs[f] == nil {
					continue
				}
				t, err := d.save(ctx, f)
				if err != nil {
					return err
				}
				s, err := scripts[f](t)
				if err != nil {
					return err
				}
				if err := d.restore(ctx, f, s); err != nil {
					return fmt.Errorf("installing chains of pod %s: %w", podRef(p), err)
				}
			}
			return nil
		})
	})
}

// freshPodScript installs a pod that has no chains yet on a node whose
// base chains are in place, and fails as a whole otherwise: -N on an
// existing chain, -A on a missing base chain. It only adds, which the
// kernel commits several times faster than anything that deletes, and
// checks no rule (-C), which would make iptables read the whole table;
// the jumps into the base chains are checked by CHECK and by the agent
// (EnsureBase), and restored by the ADD that finds the base chains gone.
func freshPodScript(p Pod, f ruleset.Family) (*script, error) {
	fromRules, err := fromPodRules(p, f)
	if err != nil {
		return nil, err
	}
	s := &script{}
	in, out := policyChains(p.Key)
	for _, c := range []string{fromPodChain(p.Key), toPodChain(p.Key), in, out} {
		s.raw("-N " + c)
	}
	for _, c := range []string{in, out} {
		s.rule("-A", c, defaultDenyRule(p))
	}
	for _, r := range fromRules {
		s.rule("-A", fromPodChain(p.Key), r)
	}
	for _, r := range toPodRules(p, f) {
		s.rule("-A", toPodChain(p.Key), r)
	}
	dispatch := dispatchRules(p, f)
	for _, chain := range sharedChains {
		for _, r := range dispatch[chain] {
			s.rule("-A", chain, r)
		}
	}
	return s, nil
}

// ensureBase adds what is missing of the base chains and jumps. Chains
// holding dispatch rules are never declared, since declaring flushes;
// PODWALL-FORWARD and PODWALL-INPUT are replaced whole, in the same
// transaction, when their rules are not the current ones.
func ensureBase(t *table, s *script, f ruleset.Family) {
	for _, c := range baseChains(f) {
		if t.has(c.name) && (!rewrittenWhole(c.name) || sameRules(t.rules(c.name), c.rules)) {
			continue
		}
		s.declare(c.name)
		for _, r := range c.rules {
			s.rule("-A", c.name, r)
		}
	}
	for _, j := range baseJumps {
		if !slices.ContainsFunc(t.rules(j.builtin), isJumpTo(j.args[len(j.args)-1])) {
			s.rule("-I", j.builtin+" 1", j.args)
		}
	}
}

// sameRules compares saved rules with wanted ones by count and by the
// jump targets and comments, which is what tells the layouts apart
// (iptables-save respells matches).
func sameRules(saved []string, want [][]string) bool {
	if len(saved) != len(want) {
		return false
	}
	for i, w := range want {
		for j, a := range w {
			if (a == "-j" || a == "--comment") && j+1 < len(w) && !strings.Contains(saved[i], w[j+1]) {
				return false
			}
		}
	}
	return true
}

func isJumpTo(chain string) func(string) bool {
	return func(rule string) bool { return strings.HasSuffix(rule, "-j "+chain) }
}

// ensureDispatch keeps the pod's dispatch rules in chain as wanted. The
// comment names everything the rules are built from, so rules of the key
// that all carry the current comment, as many as wanted, are left alone;
// otherwise all are replaced.
func ensureDispatch(t *table, s *script, chain string, p Pod, want [][]string) {
	exact := `--comment "` + podComment(p) + `"`
	var current []string
	upToDate := true
	for _, r := range t.rules(chain) {
		if ruleOfKey(r, p.Key) {
			current = append(current, r)
			upToDate = upToDate && strings.Contains(r, exact)
		}
	}
	if upToDate && len(current) == len(want) {
		return
	}
	for _, r := range current {
		s.delete(chain, r)
	}
	for _, w := range want {
		s.rule("-A", chain, w)
	}
}

func ruleOfKey(rule, key string) bool {
	return strings.Contains(rule, " key="+key+" ")
}

// RemovePod deletes the pod's dispatch rules and its four chains in both
// families. When no pod is left, the base chains and jumps go too, so a
// node without pods holds nothing of podwall.
func (d *Dataplane) RemovePod(ctx context.Context, key string) error {
	if err := ruleset.ValidateChainKey(key); err != nil {
		return err
	}
	return d.locked(ctx, func() error {
		return d.journaled(opRemove, key, func() error {
			// The families are independent: read both, then write both,
			// side by side.
			tables, err := d.saveFamilies(ctx)
			if err != nil {
				return err
			}
			scripts := map[ruleset.Family]*script{}
			for f, t := range tables {
				scripts[f] = removeScript(t, key)
			}
			if err := firstError(d.restoreFamilies(ctx, scripts)); err != nil {
				return fmt.Errorf("removing chains of %s: %w", key, err)
			}
			return nil
		})
	})
}

func removeScript(t *table, key string) *script {
	s := &script{}
	removed := map[string]bool{}
	for _, chain := range sharedChains {
		for _, r := range t.rules(chain) {
			if ruleOfKey(r, key) {
				s.delete(chain, r)
				removed[chain+" "+r] = true
			}
		}
	}
	in, out := policyChains(key)
	var gone []string
	for _, c := range []string{fromPodChain(key), toPodChain(key), in, out} {
		if t.has(c) {
			gone = append(gone, c)
		}
	}
	remaining := 0
	for _, c := range t.ourChains() {
		if !slices.Contains(gone, c) && !isBaseChain(c) {
			remaining++
		}
	}
	for _, chain := range sharedChains {
		for _, r := range t.rules(chain) {
			if _, ok := parsePodComment(r); ok && !removed[chain+" "+r] {
				remaining++
			}
		}
	}
	if remaining == 0 {
		for _, j := range baseJumps {
			for _, r := range t.rules(j.builtin) {
				if isJumpTo(j.args[len(j.args)-1])(r) {
					s.delete(j.builtin, r)
				}
			}
		}
		for _, c := range baseChains(ruleset.IPv4) {
			if t.has(c.name) {
				gone = append(gone, c.name)
			}
		}
	}
	for _, c := range gone {
		s.declare(c)
	}
	for _, c := range gone {
		s.raw("-X " + c)
	}
	return s
}

func isBaseChain(name string) bool {
	switch name {
	case chainForward, chainInput, chainEgress, chainIngress, chainAntispoof, chainMisaddressed:
		return true
	}
	return false
}

// CheckPod verifies that the pod's chains, dispatch and anti-spoofing are
// in place as EnsurePod installs them. The kernel compares the rules
// (iptables -C), so spelling differences of iptables-save do not matter.
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
		fromRules, err := fromPodRules(p, f)
		if err != nil {
			return err
		}
		t, err := d.save(ctx, f)
		if err != nil {
			return err
		}
		in, out := policyChains(p.Key)
		for _, c := range []string{chainForward, chainInput, chainEgress, chainAntispoof, chainIngress, chainMisaddressed, fromPodChain(p.Key), toPodChain(p.Key), in, out} {
			if !t.has(c) {
				problems = append(problems, fmt.Errorf("%s: chain %s missing", f, c))
			}
		}
		if len(problems) > 0 {
			continue
		}
		type want struct {
			chain string
			args  []string
		}
		var wants []want
		dispatch := dispatchRules(p, f)
		for _, chain := range sharedChains {
			for _, r := range dispatch[chain] {
				wants = append(wants, want{chain, r})
			}
		}
		wants = append(wants, want{chainForward, notClaimedRule()})
		for _, j := range baseJumps {
			wants = append(wants, want{j.builtin, j.args})
		}
		for _, r := range fromRules {
			wants = append(wants, want{fromPodChain(p.Key), r})
		}
		for _, r := range toPodRules(p, f) {
			wants = append(wants, want{toPodChain(p.Key), r})
		}
		for _, w := range wants {
			if err := d.iptables(ctx, f, append([]string{"-C", w.chain}, w.args...)...); err != nil {
				what := "rule"
				if w.chain == chainAntispoof || strings.Contains(quoteArgs(w.args), "anti-spoofing") {
					what = "anti-spoofing rule"
				}
				problems = append(problems, fmt.Errorf("%s: %s missing in %s: %s", f, what, w.chain, quoteArgs(w.args)))
			}
		}
		if got, wantN := len(t.rules(fromPodChain(p.Key))), len(fromRules); got != wantN {
			problems = append(problems, fmt.Errorf("%s: %s has %d rules, want %d", f, fromPodChain(p.Key), got, wantN))
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
	byKey := map[string]Pod{}
	for _, f := range ruleset.Families() {
		t, err := d.save(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, chain := range sharedChains {
			for _, r := range t.rules(chain) {
				if p, ok := parsePodComment(r); ok {
					if _, seen := byKey[p.Key]; !seen {
						byKey[p.Key] = p
					}
				}
			}
		}
	}
	out := make([]Pod, 0, len(byKey))
	for _, p := range byKey {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}
