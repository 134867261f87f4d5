package dataplane

import (
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// script builds iptables-restore input for the filter table.
type script struct {
	deletes []string
	decls   []string
	creates []string
	lines   []string
	removes []string
}

// declare creates the chain, or flushes it if it exists.
func (s *script) declare(chain string) { s.decls = append(s.decls, ":"+chain+" - [0:0]") }

// create creates a chain that must not exist yet: the whole transaction
// fails if it does, which tells a writer that its memory is stale.
func (s *script) create(chain string) { s.creates = append(s.creates, "-N "+chain) }

// rule adds a line such as "-A CHAIN" with args quoted for iptables-restore.
func (s *script) rule(op, chain string, args ruleset.Rule) {
	s.lines = append(s.lines, op+" "+chain+" "+quoteArgs(args))
}

// remove deletes a chain, after everything else: it must be empty (declare
// it too) and unreferenced by then.
func (s *script) remove(chain string) { s.removes = append(s.removes, "-X "+chain) }

// delete removes a rule given as iptables-save printed it, or as quoteArgs
// spelt it (after "-A CHAIN ").
func (s *script) delete(chain, savedRule string) {
	s.deletes = append(s.deletes, "-D "+chain+" "+savedRule)
}

func (s *script) empty() bool {
	return len(s.deletes) == 0 && len(s.decls) == 0 && len(s.creates) == 0 && len(s.lines) == 0 && len(s.removes) == 0
}

// bytes orders the lines so that each one is valid when it runs: deletions
// of existing rules first (a declaration would flush them away), then every
// declaration and creation (a jump may name a chain made in the same
// transaction), then the rules, then the removal of chains nothing refers
// to any more.
func (s *script) bytes() []byte {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, section := range [][]string{s.deletes, s.decls, s.creates, s.lines, s.removes} {
		for _, l := range section {
			b.WriteString(l)
			b.WriteByte('\n')
		}
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
