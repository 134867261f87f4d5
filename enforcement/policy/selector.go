package policy

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// selector is a parsed label selector with a canonical text form, used both
// as a content key (two selectors with the same meaning written in a
// different order get the same text) and in comments.
type selector struct {
	sel   labels.Selector
	canon string // "" when it matches everything
}

func (s selector) all() bool { return s.canon == "" }

func (s selector) matches(set labels.Set) bool { return s.sel.Matches(set) }

func everything() selector { return selector{sel: labels.Everything()} }

// parseSelector parses with Kubernetes' own semantics (for example NotIn
// matches objects that lack the key). A nil selector means everything here,
// because that is what a missing podSelector means inside a peer.
func parseSelector(ls *metav1.LabelSelector) (selector, error) {
	if ls == nil || len(ls.MatchLabels)+len(ls.MatchExpressions) == 0 {
		return everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return selector{}, err
	}
	reqs, _ := sel.Requirements()
	parts := make([]string, 0, len(reqs))
	for _, r := range reqs {
		parts = append(parts, canonicalRequirement(r))
	}
	slices.Sort(parts)
	parts = slices.Compact(parts)
	return selector{sel: sel, canon: strings.Join(parts, ",")}, nil
}

func canonicalRequirement(r labels.Requirement) string {
	vals := r.Values().List() // sorted and deduplicated
	switch r.Operator() {
	case selection.Equals, selection.DoubleEquals:
		return r.Key() + "=" + strings.Join(vals, ",")
	case selection.In:
		return fmt.Sprintf("%s in (%s)", r.Key(), strings.Join(vals, ","))
	case selection.NotIn:
		return fmt.Sprintf("%s notin (%s)", r.Key(), strings.Join(vals, ","))
	case selection.Exists:
		return r.Key()
	case selection.DoesNotExist:
		return "!" + r.Key()
	}
	return r.String()
}
