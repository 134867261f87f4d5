package dataplane

import (
	"reflect"
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Existing sets shrink before the rules change and grow after them; a new
// set is filled whole before any rule uses it.
func TestPlanSetsShrinksBeforeAndGrowsAfter(t *testing.T) {
	kernel := map[string]*kernelSet{
		"PODWALL-PODS4-A": {typ: "hash:ip", family: "inet", members: map[string]string{"10.0.0.1": "10.0.0.1", "10.0.0.2": "10.0.0.2"}},
		"PODWALL-CIDR4-B": {typ: "hash:net", family: "inet", members: map[string]string{
			"10.0.0.0/8": "10.0.0.0/8", "10.1.0.0/16": "10.1.0.0/16 nomatch", "10.2.0.0/16": "10.2.0.0/16"}},
		"PODWALL-PODS4-GONE": {typ: "hash:ip", family: "inet", members: map[string]string{}},
	}
	desired := []ruleset.IPSet{
		{Name: "PODWALL-PODS4-A", Family: "inet", Type: "hash:ip", Members: []string{"10.0.0.2", "10.0.0.3"}},
		// 10.1/16 loses its nomatch (grows), 10.2/16 gains one (shrinks).
		{Name: "PODWALL-CIDR4-B", Family: "inet", Type: "hash:net", Members: []string{"10.0.0.0/8", "10.2.0.0/16 nomatch"}},
		{Name: "PODWALL-PODS4-NEW", Family: "inet", Type: "hash:ip", Members: []string{"10.0.0.9"}},
	}
	p, err := planSets(desired, kernel)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]bool{}
	for _, l := range p.script {
		before[l] = true
	}
	after := map[string]bool{}
	for _, l := range p.grow {
		after[l] = true
	}
	for _, l := range []string{"del PODWALL-PODS4-A 10.0.0.1", "del PODWALL-CIDR4-B 10.2.0.0/16", "add PODWALL-CIDR4-B 10.2.0.0/16 nomatch",
		"create PODWALL-PODS4-NEW hash:ip family inet", "add PODWALL-PODS4-NEW 10.0.0.9"} {
		if !before[l] {
			t.Errorf("%q not before the rules: %q", l, p.script)
		}
	}
	for _, l := range []string{"add PODWALL-PODS4-A 10.0.0.3", "del PODWALL-CIDR4-B 10.1.0.0/16"} {
		if !after[l] {
			t.Errorf("%q not after the rules: %q", l, p.grow)
		}
	}
	if len(p.script)+len(p.grow) != 7 {
		t.Errorf("unexpected lines: before %q, after %q", p.script, p.grow)
	}
	if !reflect.DeepEqual(p.destroy, []string{"PODWALL-PODS4-GONE"}) {
		t.Errorf("destroy %q", p.destroy)
	}
}
