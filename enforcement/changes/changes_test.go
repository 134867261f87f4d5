package changes

import (
	"testing"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// The zero Set does not know what changed, records nothing, and makes
// whatever it is merged into not know either; None knows, and records.
func TestSetKnowsOrNot(t *testing.T) {
	var unknown Set
	unknown.Pod("x", "a")
	if !unknown.Unknown() || unknown.Empty() || len(unknown.Pods()) != 0 {
		t.Errorf("zero Set: unknown %t, empty %t, pods %v", unknown.Unknown(), unknown.Empty(), unknown.Pods())
	}
	s := None()
	if s.Unknown() || !s.Empty() {
		t.Fatal("None is not known and empty")
	}
	s.Pod("", "a")
	s.Policy("x", "p")
	s.Namespace("x")
	s.Attachment(ruleset.Ref{Name: "b"})
	if _, ok := s.Pods()[ruleset.Ref{Namespace: "default", Name: "a"}]; !ok {
		t.Errorf("a pod without namespace is not in default: %v", s.Pods())
	}
	if _, ok := s.Attachments()[ruleset.Ref{Namespace: "default", Name: "b"}]; !ok {
		t.Errorf("attachments %v", s.Attachments())
	}
	if s.Empty() || len(s.Policies()) != 1 || len(s.Namespaces()) != 1 {
		t.Errorf("recorded %v %v", s.Policies(), s.Namespaces())
	}

	other := None()
	other.Pod("y", "c")
	merged := None()
	merged.Merge(s)
	merged.Merge(other)
	if len(merged.Pods()) != 2 || len(s.Pods()) != 1 {
		t.Errorf("merged pods %v, merged-in pods %v (must stay as they were)", merged.Pods(), s.Pods())
	}
	merged.Merge(Rebuild())
	if !merged.Unknown() {
		t.Error("merging an unknown Set keeps knowing")
	}
	s.MarkUnknown()
	if !s.Unknown() {
		t.Error("MarkUnknown")
	}
}
