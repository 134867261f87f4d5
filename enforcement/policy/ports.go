package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// multiportSlots is how many ports one multiport match holds; a range
// takes two.
const multiportSlots = 15

// portMatch is the protocol and port part of a rule. An empty proto means
// any protocol and any port.
type portMatch struct {
	proto string
	args  []string // after the peer match: "-m tcp --dport 80" and the like
}

func protocols() []corev1.Protocol {
	return []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
}

type portRange struct{ first, last uint16 }

// portMatches turns the numeric ports of a rule (named ports already
// resolved into numbers, when they could be) into as few matches as
// possible: one per protocol, more only beyond 15 multiport slots.
func portMatches(anyPort map[corev1.Protocol]bool, ranges map[corev1.Protocol][]portRange) []portMatch {
	var out []portMatch
	for _, proto := range protocols() {
		name := ipsetProto(proto)
		if anyPort[proto] {
			out = append(out, portMatch{proto: name})
			continue
		}
		rs := mergeRanges(ranges[proto])
		if len(rs) == 1 {
			out = append(out, portMatch{proto: name, args: []string{"-m", name, "--dport", formatRange(rs[0], ":")}})
			continue
		}
		var chunk []string
		used := 0
		flush := func() {
			if len(chunk) > 0 {
				out = append(out, portMatch{proto: name, args: []string{"-m", "multiport", "--dports", strings.Join(chunk, ",")}})
			}
			chunk, used = nil, 0
		}
		for _, r := range rs {
			need := 1
			if r.first != r.last {
				need = 2
			}
			if used+need > multiportSlots {
				flush()
			}
			chunk = append(chunk, formatRange(r, ":"))
			used += need
		}
		flush()
	}
	return out
}

// mergeRanges sorts ranges and joins those that overlap or touch, which
// changes nothing about what they match.
func mergeRanges(rs []portRange) []portRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b portRange) int { return int(a.first) - int(b.first) })
	out := []portRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if int(r.first) <= int(last.last)+1 {
			last.last = max(last.last, r.last)
			continue
		}
		out = append(out, r)
	}
	return out
}

func formatRange(r portRange, sep string) string {
	if r.first == r.last {
		return strconv.Itoa(int(r.first))
	}
	return fmt.Sprintf("%d%s%d", r.first, sep, r.last)
}
