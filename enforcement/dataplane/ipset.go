package dataplane

import (
	"context"
	"fmt"
	"strings"

	"github.com/podwall/podwall/enforcement/policy"
)

// kernelSet is one of our sets as `ipset save` prints it.
type kernelSet struct {
	typ     string
	family  string
	members map[string]string // address part -> full member ("10.1.0.0/16 nomatch")
}

func readSets(ctx context.Context) (map[string]*kernelSet, error) {
	out, err := run(ctx, nil, "ipset", "save")
	if err != nil {
		return nil, fmt.Errorf("reading ipsets: %w", err)
	}
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
	return sets, nil
}

func memberKey(m string) string {
	k, _, _ := strings.Cut(m, " ")
	return k
}

// setPlan is what Apply changes in ipsets.
type setPlan struct {
	script                []string // before the rules: create, add, del
	destroy               []string // after the rules
	created, added, dropd int
}

// planSets diffs the desired sets against the kernel. Sets of the wrong
// type are an error: a set's name is a hash that includes its kind.
func planSets(desired []policy.IPSet, kernel map[string]*kernelSet) (*setPlan, error) {
	p := &setPlan{}
	want := map[string]bool{}
	for _, ds := range desired {
		want[ds.Name] = true
		ks := kernel[ds.Name]
		if ks == nil {
			p.script = append(p.script, fmt.Sprintf("create %s %s family %s", ds.Name, ds.Type, string(ds.Family)))
			p.created++
			ks = &kernelSet{members: map[string]string{}}
		} else if ks.typ != string(ds.Type) || ks.family != string(ds.Family) {
			return nil, fmt.Errorf("ipset %s is %s family %s in the kernel, want %s family %s", ds.Name, ks.typ, ks.family, ds.Type, ds.Family)
		}
		wantMembers := map[string]string{}
		for _, m := range ds.Members {
			wantMembers[memberKey(m)] = m
		}
		for k, m := range ks.members {
			if w, ok := wantMembers[k]; !ok || w != m {
				p.script = append(p.script, fmt.Sprintf("del %s %s", ds.Name, k))
				p.dropd++
			}
		}
		for _, m := range ds.Members {
			if km, ok := ks.members[memberKey(m)]; !ok || km != m {
				p.script = append(p.script, fmt.Sprintf("add %s %s", ds.Name, m))
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

func ipsetRestore(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	data := []byte(strings.Join(lines, "\n") + "\n")
	if _, err := run(ctx, data, "ipset", "restore", "-exist"); err != nil {
		return fmt.Errorf("updating ipsets: %w", err)
	}
	return nil
}
