package dataplane

import (
	"context"
	"fmt"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// kernelSet is one of our sets as `ipset save` prints it.
type kernelSet struct {
	typ     string
	family  string
	members map[string]string // address part -> full member ("10.1.0.0/16 nomatch")
}

// parseSets reads our sets from `ipset save`.
func parseSets(out []byte) map[string]*kernelSet {
	sets := map[string]*kernelSet{}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 3 || !strings.HasPrefix(fields[1], chainPrefix) {
			continue
		}
		switch fields[0] {
		case "create":
			ks := &kernelSet{typ: fields[2], members: map[string]string{}}
			for i := 3; i+1 < len(fields); i++ {
				if fields[i] == "family" {
					ks.family = fields[i+1]
				}
			}
			sets[fields[1]] = ks
		case "add":
			if ks := sets[fields[1]]; ks != nil {
				ks.members[fields[2]] = strings.Join(fields[2:], " ")
			}
		}
	}
	return sets
}

func memberKey(m string) string {
	k, _, _ := strings.Cut(m, " ")
	return k
}

// setPlan is what Apply changes in ipsets, split so that no moment of the
// update allows a packet that neither the old nor the new state allows.
// Rules only ever accept on a set match, so a set that shrinks can only
// deny more, and a set that grows can only allow more. Shrinking existing
// sets before the rules are rewritten keeps the old rules within the old
// state; growing them after keeps the new rules within the new state.
// Growing first would let the old rules accept the new members for a
// moment: a pod relabelled into a set that a rule being removed still
// matches would pass that rule.
type setPlan struct {
	script                []string // before the rules: create and fill new sets, shrink existing ones
	grow                  []string // after the rules: add to existing sets
	destroy               []string // after the rules
	changed               []string // sets created or changed
	created, added, dropd int
	// narrowed counts, by family, the lines that make an existing set
	// match fewer addresses.
	narrowed map[ruleset.Family]int
}

// holdsExactly reports whether the set holds members and nothing else.
// Compile lists each entry of a set once, so equal counts and every member
// found means equal sets.
func (ks *kernelSet) holdsExactly(members []string) bool {
	if len(ks.members) != len(members) {
		return false
	}
	for _, m := range members {
		if km, ok := ks.members[memberKey(m)]; !ok || km != m {
			return false
		}
	}
	return true
}

// shrinks reports whether an ipset restore line can only make its set
// match fewer addresses: deleting a positive entry, or adding a nomatch
// (an except of an ipBlock).
func shrinks(op, member string) bool {
	nomatch := strings.HasSuffix(member, " nomatch")
	return (op == "del") != nomatch
}

// planSets diffs the desired sets against the kernel. Sets of the wrong
// type are an error: a set's name is a hash that includes its kind.
func planSets(desired []ruleset.IPSet, kernel map[string]*kernelSet) (*setPlan, error) {
	p := &setPlan{narrowed: map[ruleset.Family]int{}}
	want := map[string]bool{}
	for _, ds := range desired {
		want[ds.Name] = true
		ks := kernel[ds.Name]
		isNew := ks == nil
		if isNew {
			p.script = append(p.script, fmt.Sprintf("create %s %s family %s", ds.Name, ds.Type, string(ds.Family)))
			p.created++
			ks = &kernelSet{members: map[string]string{}}
		} else if ks.typ != string(ds.Type) || ks.family != string(ds.Family) {
			return nil, fmt.Errorf("ipset %s is %s family %s in the kernel, want %s family %s", ds.Name, ks.typ, ks.family, ds.Type, ds.Family)
		} else if ks.holdsExactly(ds.Members) {
			continue // the usual case, checked without building a map
		}
		p.changed = append(p.changed, ds.Name)
		// A new set is used by no rule yet: it is filled whole, before
		// the rules that will use it.
		place := func(op, member, line string) {
			if isNew || shrinks(op, member) {
				if !isNew {
					p.narrowed[ds.Family]++
				}
				p.script = append(p.script, line)
			} else {
				p.grow = append(p.grow, line)
			}
		}
		wantMembers := map[string]string{}
		for _, m := range ds.Members {
			wantMembers[memberKey(m)] = m
		}
		for k, m := range ks.members {
			if w, ok := wantMembers[k]; !ok || w != m {
				place("del", m, fmt.Sprintf("del %s %s", ds.Name, k))
				p.dropd++
			}
		}
		for _, m := range ds.Members {
			if km, ok := ks.members[memberKey(m)]; !ok || km != m {
				place("add", m, fmt.Sprintf("add %s %s", ds.Name, m))
				p.added++
			}
		}
	}
	for name := range kernel {
		if !want[name] {
			p.destroy = append(p.destroy, name)
		}
	}
	return p, nil
}

func (d *Dataplane) ipsetRestore(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	data := []byte(strings.Join(lines, "\n") + "\n")
	if _, err := d.run(ctx, data, "ipset", "restore", "-exist"); err != nil {
		return fmt.Errorf("updating ipsets: %w", err)
	}
	return nil
}
