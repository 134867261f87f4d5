package iptsim

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podwall/podwall/enforcement/ruleset"
)

// set is a parsed ipset.
type set struct {
	name   string
	family ruleset.Family
	typ    ruleset.SetType
	ips    map[netip.Addr]bool
	nets   map[netip.Prefix]bool // prefix -> nomatch
	bits   []int                 // prefix lengths present, longest first
	ports  map[ipPort]bool
}

type ipPort struct {
	addr  netip.Addr
	proto string
	port  uint16
}

func (s *set) dimension() int {
	if s.typ == ruleset.SetHashIPPort {
		return 2
	}
	return 1
}

func parseSet(is ruleset.IPSet) (*set, error) {
	if len(is.Name) > 31 {
		return nil, errors.New("name longer than 31 characters")
	}
	if is.Family != ruleset.IPv4 && is.Family != ruleset.IPv6 {
		return nil, fmt.Errorf("unknown family %q", is.Family)
	}
	s := &set{name: is.Name, family: is.Family, typ: is.Type}
	famOK := func(a netip.Addr) error {
		if a.Is4() != (is.Family == ruleset.IPv4) || a.Zone() != "" {
			return fmt.Errorf("address %s does not belong in a %s set", a, is.Family)
		}
		return nil
	}
	switch is.Type {
	case ruleset.SetHashIP:
		s.ips = map[netip.Addr]bool{}
		for _, m := range is.Members {
			a, err := netip.ParseAddr(m)
			if err != nil {
				return nil, fmt.Errorf("member %q: %w", m, err)
			}
			if err := famOK(a); err != nil {
				return nil, err
			}
			if s.ips[a] {
				return nil, fmt.Errorf("member %q twice", m)
			}
			s.ips[a] = true
		}
	case ruleset.SetHashNet:
		s.nets = map[netip.Prefix]bool{}
		seenBits := map[int]bool{}
		for _, m := range is.Members {
			text, nomatch := strings.CutSuffix(m, " nomatch")
			var p netip.Prefix
			var err error
			if strings.Contains(text, "/") {
				p, err = netip.ParsePrefix(text)
			} else {
				var a netip.Addr
				a, err = netip.ParseAddr(text)
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if err != nil {
				return nil, fmt.Errorf("member %q: %w", m, err)
			}
			if err := famOK(p.Addr()); err != nil {
				return nil, err
			}
			if p.Bits() == 0 {
				return nil, fmt.Errorf("member %q: hash:net cannot hold a /0", m)
			}
			if p != p.Masked() {
				return nil, fmt.Errorf("member %q: host bits set", m)
			}
			if _, dup := s.nets[p]; dup {
				return nil, fmt.Errorf("member %q: element already in the set", m)
			}
			s.nets[p] = nomatch
			if !seenBits[p.Bits()] {
				seenBits[p.Bits()] = true
				s.bits = append(s.bits, p.Bits())
			}
		}
		// longest prefix first, as the kernel walks them
		slices.SortFunc(s.bits, func(a, b int) int { return b - a })
	case ruleset.SetHashIPPort:
		s.ports = map[ipPort]bool{}
		for _, m := range is.Members {
			addrText, pp, ok := strings.Cut(m, ",")
			if !ok {
				return nil, fmt.Errorf("member %q: want ip,proto:port", m)
			}
			a, err := netip.ParseAddr(addrText)
			if err != nil {
				return nil, fmt.Errorf("member %q: %w", m, err)
			}
			if err := famOK(a); err != nil {
				return nil, err
			}
			proto, portText, ok := strings.Cut(pp, ":")
			if !ok {
				return nil, fmt.Errorf("member %q: want ip,proto:port", m)
			}
			switch proto {
			case "tcp", "udp", "sctp":
			default:
				return nil, fmt.Errorf("member %q: unsupported protocol %q", m, proto)
			}
			port, err := parsePort(portText)
			if err != nil {
				return nil, fmt.Errorf("member %q: %w", m, err)
			}
			k := ipPort{a, proto, port}
			if s.ports[k] {
				return nil, fmt.Errorf("member %q twice", m)
			}
			s.ports[k] = true
		}
	default:
		return nil, fmt.Errorf("unsupported set type %q", is.Type)
	}
	return s, nil
}

func (s *set) matches(p Packet, flags []string) bool {
	addr := p.Src
	if flags[0] == "dst" {
		addr = p.Dst
	}
	if addr.Is4() != (s.family == ruleset.IPv4) {
		return false
	}
	switch s.typ {
	case ruleset.SetHashIP:
		return s.ips[addr]
	case ruleset.SetHashNet:
		// The most specific prefix that contains the address decides; a
		// nomatch element there means no match.
		for _, b := range s.bits {
			pfx, _ := addr.Prefix(b)
			if nomatch, ok := s.nets[pfx]; ok {
				return !nomatch
			}
		}
		return false
	case ruleset.SetHashIPPort:
		return s.ports[ipPort{addr, strings.ToLower(string(p.Protocol)), p.DstPort}]
	}
	return false
}
