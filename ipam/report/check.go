package report

import (
	"fmt"
	"io"
	"math/big"
	"net/netip"

	"github.com/podwall/podwall/ipam"
)

// Level grades a finding of Check.
type Level string

const (
	// LevelConflict: an active range collides; the check fails.
	LevelConflict Level = "CONFLICT"
	// LevelWarning: a draining range collides; existing pods are affected,
	// new ones are not.
	LevelWarning Level = "warning"
	// LevelInfo: worth knowing, harmless (exclusions, the pod network's own routes).
	LevelInfo Level = "info"
	// LevelOK: a range with nothing to report.
	LevelOK Level = "ok"
)

// Finding is one line of a check.
type Finding struct {
	Level   Level
	Message string
}

// CheckReport is the outcome of Check, in the order of the configured ranges.
type CheckReport struct {
	Findings []Finding
}

// Count returns how many findings have level l.
func (r CheckReport) Count(l Level) int {
	n := 0
	for _, f := range r.Findings {
		if f.Level == l {
			n++
		}
	}
	return n
}

// Check reports every overlap of each configured range with the node's
// routes, the service CIDRs, the other ranges and the exclusions. routes are
// all the node's routes (or at least those overlapping a range); the pod
// network's own are told apart with the plugin's own rule.
func Check(cfg *ipam.Config, routes []ipam.NodeRoute) CheckReport {
	c := checker{cfg: cfg, foreign: cfg.ForeignRoutes(routes, nil)}
	foreignSet := make(map[ipam.NodeRoute]bool, len(c.foreign))
	for _, f := range c.foreign {
		foreignSet[f] = true
	}
	for _, rt := range routes {
		// Default routes are no destination of their own (ForeignRoutes
		// ignores them too): they say nothing about a range.
		if rt.Dst.Bits() > 0 && cfg.OverlapsRange(rt.Dst) && !foreignSet[rt] {
			c.own = append(c.own, rt)
		}
	}
	for i := range cfg.Ranges {
		c.checkRange(i)
	}
	c.checkUnusedExclusions()
	return CheckReport{Findings: c.findings}
}

type checker struct {
	cfg      *ipam.Config
	foreign  []ipam.NodeRoute
	own      []ipam.NodeRoute
	findings []Finding
}

func (c *checker) add(l Level, format string, args ...any) {
	c.findings = append(c.findings, Finding{Level: l, Message: fmt.Sprintf(format, args...)})
}

func rangeKind(r ipam.Range) string {
	if r.Draining {
		return "draining"
	}
	return "active"
}

// collisionLevel is the level of a collision involving r: only an active
// range hands out addresses, so only it makes the check fail.
func collisionLevel(r ipam.Range) Level {
	if r.Draining {
		return LevelWarning
	}
	return LevelConflict
}

func (c *checker) checkRange(i int) {
	rg := c.cfg.Ranges[i]
	kind := rangeKind(rg)
	bad := collisionLevel(rg)
	before := len(c.findings)

	for _, f := range c.foreign {
		if !f.Dst.Overlaps(rg.Subnet) {
			continue
		}
		gw := ""
		if f.Dst.Contains(rg.Gateway) {
			gw = fmt.Sprintf(", including gateway %s", rg.Gateway)
		}
		if rg.Draining {
			c.add(bad, "draining range %s overlaps route %s (%s addresses%s; pods still holding them cannot reach what is behind the route)",
				rg.Subnet, f, overlapSize(f.Dst, rg.Subnet), gw)
		} else {
			c.add(bad, "active range %s overlaps route %s (%s addresses unusable%s)", rg.Subnet, f, overlapSize(f.Dst, rg.Subnet), gw)
		}
	}
	for _, svc := range c.cfg.ServiceCIDRs {
		if svc.Overlaps(rg.Subnet) {
			c.add(bad, "%s range %s overlaps service CIDR %s (%s addresses)", kind, rg.Subnet, svc, overlapSize(svc, rg.Subnet))
		}
	}
	for _, other := range c.cfg.Ranges[:i] {
		if other.Subnet.Overlaps(rg.Subnet) {
			l := bad
			if !other.Draining {
				l = LevelConflict
			}
			c.add(l, "%s range %s overlaps %s range %s", kind, rg.Subnet, rangeKind(other), other.Subnet)
		}
	}
	c.reportOwnRoutes(rg)
	for _, ex := range c.cfg.Exclude {
		if ex.Overlaps(rg.Subnet) {
			c.add(LevelInfo, "%s range %s overlaps exclusion %s (%s addresses excluded)", kind, rg.Subnet, ex, overlapSize(ex, rg.Subnet))
		}
	}

	troubled := false
	for _, f := range c.findings[before:] {
		troubled = troubled || f.Level == LevelConflict || f.Level == LevelWarning
	}
	c.summarise(rg, troubled)
}

func (c *checker) reportOwnRoutes(rg ipam.Range) {
	perPod := 0
	for _, rt := range c.own {
		if !rt.Dst.Overlaps(rg.Subnet) {
			continue
		}
		if rt.LinkKind == "veth" {
			perPod++ // one per pod in routed layouts: a count says enough
			continue
		}
		c.add(LevelInfo, "route %s is the pod network's own (%s of range %s)", rt, rt.LinkKind, rg.Subnet)
	}
	if perPod > 0 {
		c.add(LevelInfo, "range %s: %d per-pod routes through veths are the pod network's own", rg.Subnet, perPod)
	}
}

func (c *checker) summarise(rg ipam.Range, troubled bool) {
	level := LevelOK
	if troubled {
		level = LevelInfo
	}
	origin := ""
	if rg.FromNode {
		origin = ", a podCIDR of the Node"
	}
	if rg.Draining {
		c.add(level, "range %s (draining%s): hands out no new address; existing allocations stay valid", rg.Subnet, origin)
		return
	}
	left := c.cfg.Pool(rg, ipam.Prefixes(c.foreign)).Size()
	lost := new(big.Int).Sub(c.cfg.Pool(rg, nil).Size(), left)
	if lost.Sign() > 0 {
		c.add(level, "range %s (active%s): %s allocatable addresses (%s more are inside foreign routes)", rg.Subnet, origin, left, lost)
		return
	}
	c.add(level, "range %s (active%s): %s allocatable addresses", rg.Subnet, origin, left)
}

func (c *checker) checkUnusedExclusions() {
	for _, ex := range c.cfg.Exclude {
		if !c.cfg.OverlapsRange(ex) {
			c.add(LevelInfo, "exclusion %s overlaps no range: it has no effect", ex)
		}
	}
}

// overlapSize is the number of addresses two overlapping prefixes share: one
// contains the other, so it is the size of the longer one.
func overlapSize(a, b netip.Prefix) *big.Int {
	bits := max(a.Bits(), b.Bits())
	return new(big.Int).Lsh(big.NewInt(1), uint(a.Addr().BitLen()-bits))
}

// WriteCheck prints one line per finding, led by its level, and a summary.
func WriteCheck(w io.Writer, r CheckReport) error {
	for _, f := range r.Findings {
		if _, err := fmt.Fprintf(w, "%s %s\n", f.Level, f.Message); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "summary: %s, %s\n",
		plural(r.Count(LevelConflict), "conflict"), plural(r.Count(LevelWarning), "warning"))
	return err
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
