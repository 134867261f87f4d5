package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// Probe answers whether podwall can enforce here: iptables, ip6tables and
// ipset run, the backend is not mixed, and the matches podwall's rules use
// (set, physdev, conntrack, comment, multiport, mark) load. It creates a
// throwaway chain and set with such rules and removes them again.
func (d *Dataplane) Probe(ctx context.Context) error {
	if err := checkNotMixed(ctx, d.runner, d.backend); err != nil {
		return err
	}
	name := fmt.Sprintf("%sPROBE-%d", chainPrefix, os.Getpid())
	if len(name) > 28 {
		name = name[:28]
	}
	return d.locked(ctx, func() error { return d.probe(ctx, name) })
}

func (d *Dataplane) probe(ctx context.Context, name string) error {
	var errs []error
	for _, f := range ruleset.Families() {
		set := fmt.Sprintf("%sPROBE%s-%d", chainPrefix, f.String()[3:], os.Getpid())
		if err := d.ipsetRestore(ctx, []string{fmt.Sprintf("create %s hash:ip family %s", set, string(f))}); err != nil {
			errs = append(errs, err)
			continue
		}
		create := &script{}
		create.declare(name)
		rules := []ruleset.Rule{
			{"-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
			{"-m", "physdev", "--physdev-in", "podwallprobe0", "-j", "RETURN"},
			{"-m", "physdev", "--physdev-out", "podwallprobe0", "--physdev-is-bridged", "-j", "RETURN"},
			{"-p", "tcp", "-m", "multiport", "--dports", "80,443", "-m", "comment", "--comment", "podwall: probe", "-j", "RETURN"},
			{"-m", "set", "--match-set", set, "src", "-j", "RETURN"},
			{"-m", "mark", "--mark", markEgressPassed, "-j", "MARK", "--set-xmark", markEgressPassed},
		}
		if f == ruleset.IPv6 {
			rules = append(rules, neighbourDiscovery("fe80::/10", "RETURN")...)
		}
		for _, r := range rules {
			create.rule("-A", name, r)
		}
		err := d.restore(ctx, f, create)
		remove := &script{}
		remove.declare(name)
		remove.remove(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s matches unusable: %w", f, err))
		} else if err := d.restore(ctx, f, remove); err != nil {
			errs = append(errs, err)
		}
		if err := d.ipsetRestore(ctx, []string{"destroy " + set}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
