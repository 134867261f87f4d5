package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// fakeKernel is a Runner that interprets the commands the dataplane runs
// against an in-memory filter table per family and a set of ipsets,
// refusing what the kernel refuses: a rule in a missing chain, a jump to
// a missing chain or a match on a missing set, deleting a rule that is
// not there, creating a chain that exists, removing a chain that is
// referenced or not empty, destroying a set a rule uses. A restore is
// atomic, as in the kernel. It records every command, in order.
type fakeKernel struct {
	mu     sync.Mutex
	tables map[ruleset.Family]*fakeTable
	sets   map[string]*fakeSet
	calls  []fakeCall
}

type fakeCall struct {
	name  string
	args  []string
	stdin string
}

type fakeTable struct {
	chains map[string][]string // rules normalised by quoteArgs
	order  []string
}

type fakeSet struct {
	typ, family string
	members     map[string]string
}

var builtinChains = []string{"INPUT", "FORWARD", "OUTPUT"}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{tables: map[ruleset.Family]*fakeTable{}, sets: map[string]*fakeSet{}}
	for _, f := range ruleset.Families() {
		t := &fakeTable{chains: map[string][]string{}}
		for _, c := range builtinChains {
			t.chains[c] = nil
			t.order = append(t.order, c)
		}
		k.tables[f] = t
	}
	return k
}

// newFakeDataplane is a dataplane writing into k.
func newFakeDataplane(k *fakeKernel, stateDir string) *Dataplane {
	d := newDataplane(Config{StateDir: stateDir}, nil, k, backendNFT)
	d.flows = k
	return d
}

// clearEpochs records a conntrack sweep as a call named "conntrack".
func (k *fakeKernel) clearEpochs(f ruleset.Family, keep uint32) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fakeCall{name: "conntrack", args: []string{f.String(), "keep", strconv.Itoa(int(keep))}})
	return 0, nil
}

type doneProcess struct {
	out []byte
	err error
}

func (p doneProcess) Wait() ([]byte, error) { return p.out, p.err }

func (k *fakeKernel) Start(_ context.Context, stdin []byte, name string, args ...string) (Process, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fakeCall{name: name, args: args, stdin: string(stdin)})
	out, err := k.run(stdin, name, args)
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return doneProcess{out, err}, nil
}

func (k *fakeKernel) family(name string) (ruleset.Family, bool) {
	switch {
	case strings.HasPrefix(name, "iptables-nft"):
		return ruleset.IPv4, true
	case strings.HasPrefix(name, "ip6tables-nft"):
		return ruleset.IPv6, true
	}
	return "", false
}

func (k *fakeKernel) run(stdin []byte, name string, args []string) ([]byte, error) {
	if name == "ipset" && len(args) > 0 {
		switch args[0] {
		case "save":
			return k.ipsetSave(), nil
		case "restore":
			return nil, k.ipsetRestore(string(stdin))
		}
	}
	f, ok := k.family(name)
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, ErrCommandNotFound)
	}
	t := k.tables[f]
	switch {
	case strings.HasSuffix(name, "-restore"):
		next, err := k.restore(t.clone(), string(stdin))
		if err != nil {
			return nil, err
		}
		k.tables[f] = next
		return nil, nil
	case strings.HasSuffix(name, "-save"):
		return t.save(), nil
	case len(args) >= 3 && args[0] == "-w" && args[1] == "-C":
		if !slices.Contains(t.chains[args[2]], quoteArgs(args[3:])) {
			return nil, errors.New("iptables: Bad rule (does a matching rule exist in that chain?)")
		}
		return nil, nil
	}
	return nil, fmt.Errorf("fake kernel: unsupported %s %v", name, args)
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: map[string][]string{}, order: slices.Clone(t.order)}
	for name, rules := range t.chains {
		c.chains[name] = slices.Clone(rules)
	}
	return c
}

func (t *fakeTable) save() []byte {
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for _, c := range t.order {
		policy := "-"
		if slices.Contains(builtinChains, c) {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range t.order {
		for _, r := range t.chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// splitArgs splits a rule the way iptables-restore does (see quoteArgs).
func splitArgs(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped, started := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote, started = !inQuote, true
		case r == ' ' && !inQuote:
			if started {
				out = append(out, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteRune(r)
			started = true
		}
	}
	if started {
		out = append(out, cur.String())
	}
	return out
}

func argAfter(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

var verdicts = []string{"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "CONNMARK", "LOG", "NFLOG"}

func (k *fakeKernel) checkRule(t *fakeTable, args []string) error {
	if target, ok := argAfter(args, "-j"); ok && !slices.Contains(verdicts, target) {
		if _, ok := t.chains[target]; !ok {
			return fmt.Errorf("jump to missing chain %s", target)
		}
	}
	if set, ok := argAfter(args, "--match-set"); ok && k.sets[set] == nil {
		return fmt.Errorf("Set %s doesn't exist", set)
	}
	return nil
}

func (k *fakeKernel) restore(t *fakeTable, script string) (*fakeTable, error) {
	for n, line := range strings.Split(strings.TrimRight(script, "\n"), "\n") {
		fail := func(format string, a ...any) (*fakeTable, error) {
			return nil, fmt.Errorf("line %d (%s): %s", n+1, line, fmt.Sprintf(format, a...))
		}
		switch {
		case line == "*filter" || line == "COMMIT" || line == "":
			continue
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			if _, ok := t.chains[name]; !ok {
				t.order = append(t.order, name)
			}
			t.chains[name] = nil
			continue
		}
		op, rest, _ := strings.Cut(line, " ")
		chain, spec, _ := strings.Cut(rest, " ")
		rules, exists := t.chains[chain]
		switch op {
		case "-N":
			if exists {
				return fail("chain already exists")
			}
			t.chains[chain] = nil
			t.order = append(t.order, chain)
		case "-X":
			if !exists || len(rules) > 0 {
				return fail("chain missing or not empty")
			}
			for _, other := range t.chains {
				for _, r := range other {
					if target, _ := argAfter(splitArgs(r), "-j"); target == chain {
						return fail("chain referenced")
					}
				}
			}
			delete(t.chains, chain)
			t.order = slices.DeleteFunc(t.order, func(c string) bool { return c == chain })
		case "-A", "-I", "-D":
			if !exists {
				return fail("no chain")
			}
			args := splitArgs(spec)
			pos := -1
			if op == "-I" {
				pos = 0
				if i, err := strconv.Atoi(args[0]); err == nil {
					pos, args = i-1, args[1:]
				}
			}
			rule := quoteArgs(args)
			if op == "-D" {
				i := slices.Index(rules, rule)
				if i < 0 {
					return fail("no such rule")
				}
				t.chains[chain] = slices.Delete(rules, i, i+1)
				continue
			}
			if err := k.checkRule(t, args); err != nil {
				return fail("%v", err)
			}
			if pos < 0 || pos > len(rules) {
				pos = len(rules)
			}
			t.chains[chain] = slices.Insert(rules, pos, rule)
		default:
			return fail("unsupported")
		}
	}
	return t, nil
}

func (k *fakeKernel) setInUse(name string) bool {
	for _, t := range k.tables {
		for _, rules := range t.chains {
			for _, r := range rules {
				if set, ok := argAfter(splitArgs(r), "--match-set"); ok && set == name {
					return true
				}
			}
		}
	}
	return false
}

func (k *fakeKernel) ipsetRestore(lines string) error {
	for _, line := range strings.Split(strings.TrimRight(lines, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			return fmt.Errorf("ipset: bad line %q", line)
		}
		s := k.sets[f[1]]
		switch f[0] {
		case "create":
			if s == nil {
				k.sets[f[1]] = &fakeSet{typ: f[2], family: f[4], members: map[string]string{}}
			}
		case "add", "del":
			if s == nil {
				return fmt.Errorf("ipset: %q: set missing", line)
			}
			if f[0] == "add" {
				s.members[f[2]] = strings.Join(f[2:], " ")
			} else {
				delete(s.members, f[2])
			}
		case "destroy":
			if s == nil || k.setInUse(f[1]) {
				return fmt.Errorf("ipset: %q: missing or in use by a kernel component", line)
			}
			delete(k.sets, f[1])
		default:
			return fmt.Errorf("ipset: bad line %q", line)
		}
	}
	return nil
}

func (k *fakeKernel) ipsetSave() []byte {
	var b bytes.Buffer
	names := make([]string, 0, len(k.sets))
	for name := range k.sets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s := k.sets[name]
		fmt.Fprintf(&b, "create %s %s family %s hashsize 1024 maxelem 65536\n", name, s.typ, s.family)
		for _, m := range s.members {
			fmt.Fprintf(&b, "add %s %s\n", name, m)
		}
	}
	return b.Bytes()
}

// writes returns the commands since call i that change the kernel.
func (k *fakeKernel) writes(i int) []fakeCall {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []fakeCall
	for _, c := range k.calls[i:] {
		if strings.HasSuffix(c.name, "-restore") || (c.name == "ipset" && c.args[0] == "restore") || c.name == "conntrack" {
			out = append(out, c)
		}
	}
	return out
}

func (k *fakeKernel) mark() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.calls)
}
