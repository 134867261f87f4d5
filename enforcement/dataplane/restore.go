package dataplane

import (
	"strings"
)

// script builds iptables-restore input for the filter table.
type script struct {
	deletes []string
	decls   []string
	lines   []string
}

// declare creates the chain, or flushes it if it exists.
func (s *script) declare(chain string) { s.decls = append(s.decls, ":"+chain+" - [0:0]") }

// rule adds a line such as "-A CHAIN" with args quoted for iptables-restore.
func (s *script) rule(op, chain string, args []string) {
	s.lines = append(s.lines, op+" "+chain+" "+quoteArgs(args))
}

// raw adds a line verbatim (for example "-X CHAIN").
func (s *script) raw(line string) { s.lines = append(s.lines, line) }

// delete removes a rule given as iptables-save printed it (after "-A CHAIN ").
func (s *script) delete(chain, savedRule string) {
	s.deletes = append(s.deletes, "-D "+chain+" "+savedRule)
}

func (s *script) empty() bool { return len(s.deletes) == 0 && len(s.decls) == 0 && len(s.lines) == 0 }

// bytes orders the lines so that each one is valid when it runs: deletions
// of existing rules first (a declaration would flush them away), then every
// declaration (a jump may name a chain declared in the same transaction),
// then the rest.
func (s *script) bytes() []byte {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, l := range s.deletes {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, l := range s.decls {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, l := range s.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// quoteArgs joins args the way iptables-restore splits them: double quotes
// around anything with blanks or quotes, inner quotes escaped.
func quoteArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'\\#") {
			a = `"` + strings.ReplaceAll(strings.ReplaceAll(a, `\`, `\\`), `"`, `\"`) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}
