package policy

import (
	"strings"
	"unicode/utf8"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// maxComment is what the iptables comment match holds (256 with the NUL).
const maxComment = 255

// sanitizeComment makes text safe for a comment inside iptables-restore
// and ipset restore input: no quotes or control characters, and short
// enough that the kernel does not reject the rule.
func sanitizeComment(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '"' || r == '\\':
			return '\''
		case r < 0x20 || r == 0x7f:
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxComment {
		return s
	}
	cut := maxComment - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func withComment(args []string, comment, target string) ruleset.Rule {
	r := make(ruleset.Rule, 0, len(args)+6)
	r = append(r, args...)
	r = append(r, "-m", "comment", "--comment", sanitizeComment(comment))
	if target != "" {
		r = append(r, "-j", target)
	}
	return r
}
