package dataplane

import (
	"strings"
)

// table is the filter table as iptables-save prints it.
type table struct {
	chains map[string]*savedChain
}

// savedChain keeps each rule as iptables-save prints it after "-A <chain> ",
// which is valid iptables-restore input again (for -D, for example).
type savedChain struct {
	policy string // "-" for user chains
	rules  []string
}

func parseSave(out string) *table {
	t := &table{chains: map[string]*savedChain{}}
	inFilter := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case !inFilter:
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) >= 2 {
				t.chains[fields[0]] = &savedChain{policy: fields[1]}
			}
		case strings.HasPrefix(line, "-A "):
			name, rest, _ := strings.Cut(line[3:], " ")
			c := t.chains[name]
			if c == nil {
				c = &savedChain{policy: "-"}
				t.chains[name] = c
			}
			c.rules = append(c.rules, rest)
		}
	}
	return t
}

func (t *table) has(chain string) bool { return t.chains[chain] != nil }

func (t *table) rules(chain string) []string {
	if c := t.chains[chain]; c != nil {
		return c.rules
	}
	return nil
}

// hasNonDefault reports rules, user chains or non-ACCEPT policies.
func (t *table) hasNonDefault() bool {
	for name, c := range t.chains {
		if len(c.rules) > 0 {
			return true
		}
		switch name {
		case "INPUT", "FORWARD", "OUTPUT":
			if c.policy != "ACCEPT" {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// ourChains lists the chains with podwall's prefix.
func (t *table) ourChains() []string {
	var out []string
	for name := range t.chains {
		if strings.HasPrefix(name, chainPrefix) {
			out = append(out, name)
		}
	}
	return out
}
