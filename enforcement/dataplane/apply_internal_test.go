package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Fingerprints are in the kernels of running nodes: the function must keep
// giving what it always gave, or every chain is rewritten once.
func TestFingerprintStable(t *testing.T) {
	reference := func(c ruleset.Chain) string {
		h := sha256.New()
		fmt.Fprintf(h, "%s\n%s\n", c.Family, c.Name)
		for _, r := range c.Rules {
			for _, a := range r {
				fmt.Fprintf(h, "%d:%s;", len(a), a)
			}
			h.Write([]byte{'\n'})
		}
		return fmt.Sprintf("podwall: rules sha256=%s n=%d", hex.EncodeToString(h.Sum(nil))[:24], len(c.Rules))
	}
	for _, c := range []ruleset.Chain{
		{Family: ruleset.IPv4, Name: "PODWALL-IN-AAAAAAAAAAAAAAAA"},
		{Family: ruleset.IPv6, Name: "PODWALL-OUT-AAAAAAAAAAAAAAAA", Rules: []ruleset.Rule{
			{"-p", "tcp", "-m", "set", "--match-set", "PODWALL-PODS6-X", "dst", "-m", "comment", "--comment", "a: allowed", "-j", "RETURN"},
			{"", "-m", "comment", "--comment", "x: default deny", "-j", "DROP"},
		}},
	} {
		if got, want := fingerprint(c), reference(c); got != want {
			t.Errorf("%s: fingerprint %q, want %q", c.Name, got, want)
		}
	}
}

// A chain the plugin just created gets its rules inserted ahead of the
// default deny: a commit that deletes nothing.
func TestWriteChainIntoFreshChainOnlyInserts(t *testing.T) {
	allow := ruleset.Rule{"-p", "tcp", "-m", "comment", "--comment", "x/a ingress: allowed", "-j", "RETURN"}
	deny := ruleset.Rule{"-m", "comment", "--comment", "x/a ingress: default deny", "-j", "DROP"}
	c := ruleset.Chain{Family: ruleset.IPv4, Name: "PODWALL-IN-AAAAAAAAAAAAAAAA", Rules: []ruleset.Rule{allow, deny}}
	fp := fingerprint(c)

	s := &script{}
	cs := writeChain(s, c, fp, true)
	got := string(s.bytes())
	want := "*filter\n" +
		`-I PODWALL-IN-AAAAAAAAAAAAAAAA 1 -p tcp -m comment --comment "x/a ingress: allowed" -j RETURN` + "\n" +
		`-I PODWALL-IN-AAAAAAAAAAAAAAAA 2 -m comment --comment "x/a ingress: default deny" -j DROP` + "\n" +
		`-I PODWALL-IN-AAAAAAAAAAAAAAAA 3 -m comment --comment "` + fp + `"` + "\n" +
		"COMMIT\n"
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
	if !cs.hasFingerprint(fp, 2) || cs.onlyDefaultDeny() {
		t.Errorf("state after the insert %+v does not match the chain written", cs)
	}

	// Without a final unconditional verdict the default deny would not be
	// dead: flush and refill.
	open := ruleset.Chain{Family: ruleset.IPv4, Name: c.Name, Rules: []ruleset.Rule{allow}}
	s = &script{}
	cs = writeChain(s, open, fingerprint(open), true)
	if got := string(s.bytes()); !strings.Contains(got, ":PODWALL-IN-AAAAAAAAAAAAAAAA - [0:0]\n-A ") || strings.Contains(got, "-I ") {
		t.Errorf("chain without a final verdict not flushed and refilled:\n%s", got)
	}
	if cs.denyTail || !cs.hasFingerprint(fingerprint(open), 1) {
		t.Errorf("state after the refill %+v", cs)
	}
	// A chain that holds anything else is flushed and refilled too.
	s = &script{}
	writeChain(s, c, fp, false)
	if got := string(s.bytes()); strings.Contains(got, "-I ") {
		t.Errorf("existing chain not refilled:\n%s", got)
	}
}

// The state read back from iptables-save recognises both shapes of an
// up-to-date chain, and the plugin's fresh chain.
func TestChainStatesReadBack(t *testing.T) {
	c := ruleset.Chain{Family: ruleset.IPv4, Name: "PODWALL-IN-AAAAAAAAAAAAAAAA", Rules: []ruleset.Rule{
		{"-m", "set", "--match-set", "PODWALL-PODS4-X", "src", "-m", "comment", "--comment", "allowed", "-j", "RETURN"},
		{"-m", "comment", "--comment", "default deny", "-j", "DROP"},
	}}
	fp := fingerprint(c)
	save := `*filter
:PODWALL-IN-FRESHFRESHFRESH0 - [0:0]
:PODWALL-IN-INSERTEDINSERTED - [0:0]
:PODWALL-IN-APPENDEDAPPENDED - [0:0]
:PODWALL-IN-HANDEDITEDHANDED - [0:0]
-A PODWALL-IN-FRESHFRESHFRESH0 -m comment --comment "podwall: default deny x/a" -j DROP
-A PODWALL-IN-INSERTEDINSERTED -m set --match-set PODWALL-PODS4-X src -m comment --comment allowed -j RETURN
-A PODWALL-IN-INSERTEDINSERTED -m comment --comment "default deny" -j DROP
-A PODWALL-IN-INSERTEDINSERTED -m comment --comment "` + fp + `"
-A PODWALL-IN-INSERTEDINSERTED -m comment --comment "podwall: default deny x/a" -j DROP
-A PODWALL-IN-APPENDEDAPPENDED -m set --match-set PODWALL-PODS4-X src -m comment --comment allowed -j RETURN
-A PODWALL-IN-APPENDEDAPPENDED -m comment --comment "default deny" -j DROP
-A PODWALL-IN-APPENDEDAPPENDED -m comment --comment "` + fp + `"
-A PODWALL-IN-HANDEDITEDHANDED -m comment --comment "default deny" -j DROP
-A PODWALL-IN-HANDEDITEDHANDED -m comment --comment "` + fp + `"
-A PODWALL-IN-HANDEDITEDHANDED -m comment --comment "podwall: default deny x/a" -j DROP
COMMIT
`
	st := chainStates(parseSave(save))
	if cs := st["PODWALL-IN-FRESHFRESHFRESH0"]; !cs.onlyDefaultDeny() || cs.hasFingerprint(fp, 2) {
		t.Errorf("fresh chain read as %+v", cs)
	}
	for _, name := range []string{"PODWALL-IN-INSERTEDINSERTED", "PODWALL-IN-APPENDEDAPPENDED"} {
		cs := st[name]
		if !cs.hasFingerprint(fp, 2) || cs.onlyDefaultDeny() || len(cs.sets) != 1 {
			t.Errorf("%s read as %+v, want up to date", name, cs)
		}
	}
	if cs := st["PODWALL-IN-HANDEDITEDHANDED"]; cs.hasFingerprint(fp, 2) {
		t.Errorf("chain with a rule missing read as up to date: %+v", cs)
	}
}

// A chain remembered with its rules is compared by content, not by where
// the rules are stored.
func TestChainStateHoldsComparesContent(t *testing.T) {
	rules := []ruleset.Rule{{"-p", "tcp", "-j", "RETURN"}, {"-j", "DROP"}}
	cs := chainState{rules: rules}
	same := []ruleset.Rule{{"-p", "tcp", "-j", "RETURN"}, {"-j", "DROP"}}
	if !cs.holds(same) {
		t.Error("equal rules not recognised")
	}
	for _, other := range [][]ruleset.Rule{
		{{"-p", "udp", "-j", "RETURN"}, {"-j", "DROP"}},
		{{"-p", "tcp", "-j", "RETURN"}},
		{{"-p", "tcp", "-j", "RETURN"}, {"-j", "DROP"}, {"-j", "DROP"}},
		nil,
	} {
		if cs.holds(other) {
			t.Errorf("%v taken for %v", other, rules)
		}
	}
	if (chainState{}).holds(nil) {
		t.Error("a chain read back without rules taken as holding nothing")
	}
}

// Apply recognises the plugin's default deny as iptables-save prints it;
// if the rule changes, this must change with it.
func TestDefaultDenyRecognised(t *testing.T) {
	p := Pod{Namespace: "x", Name: "a"}
	if saved := quoteArgs(defaultDenyRule(p)); !isDefaultDeny(saved) {
		t.Errorf("the plugin's default deny %q is not recognised", saved)
	}
	for _, other := range []string{
		`-m comment --comment "x/a ingress: default deny (deny mode)" -j DROP`,
		`-m comment --comment "podwall: default deny x/a" -j RETURN`,
		`-s 10.0.0.1/32 -m comment --comment "podwall: default deny x/a" -j DROP`,
	} {
		if isDefaultDeny(other) {
			t.Errorf("%q taken for the plugin's default deny", other)
		}
	}
}
