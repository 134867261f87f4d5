package ipam_test

import (
	"errors"
	"maps"
	"net/netip"
	"slices"

	"github.com/podwall/podwall/ipam"
)

// memStore is an in-memory ipam.Store that behaves like the file store:
// garbage entries are kept as such and reported, never dropped.
type memStore struct {
	records map[ipam.Attachment]ipam.Record
	// garbageRecords are records whose content cannot be decoded.
	garbageRecords map[ipam.Attachment]bool
	reservations   map[netip.Addr]ipam.Attachment
	// garbageReservations exist but name no readable owner.
	garbageReservations map[netip.Addr]bool
	cursors             map[netip.Prefix]netip.Addr

	// failOp, when set, is asked before every mutation; a non-nil answer
	// makes the mutation fail without effect.
	failOp func(op string) error
	// ops counts the mutations that took effect.
	ops int
}

var _ ipam.Store = (*memStore)(nil)

func newMemStore() *memStore {
	return &memStore{
		records:             map[ipam.Attachment]ipam.Record{},
		garbageRecords:      map[ipam.Attachment]bool{},
		reservations:        map[netip.Addr]ipam.Attachment{},
		garbageReservations: map[netip.Addr]bool{},
		cursors:             map[netip.Prefix]netip.Addr{},
	}
}

func (m *memStore) clone() *memStore {
	c := newMemStore()
	for k, v := range m.records {
		v.Allocations = slices.Clone(v.Allocations)
		c.records[k] = v
	}
	maps.Copy(c.garbageRecords, m.garbageRecords)
	maps.Copy(c.reservations, m.reservations)
	maps.Copy(c.garbageReservations, m.garbageReservations)
	maps.Copy(c.cursors, m.cursors)
	return c
}

func (m *memStore) mutate(op string) error {
	if m.failOp != nil {
		if err := m.failOp(op); err != nil {
			return err
		}
	}
	m.ops++
	return nil
}

func (m *memStore) Record(att ipam.Attachment) (ipam.Record, bool, error) {
	if m.garbageRecords[att] {
		return ipam.Record{}, false, ipam.ErrUnreadable
	}
	rec, ok := m.records[att]
	rec.Allocations = slices.Clone(rec.Allocations)
	return rec, ok, nil
}

func (m *memStore) PutRecord(rec ipam.Record) error {
	if err := m.mutate("PutRecord"); err != nil {
		return err
	}
	delete(m.garbageRecords, rec.Attachment)
	rec.Allocations = slices.Clone(rec.Allocations)
	m.records[rec.Attachment] = rec
	return nil
}

func (m *memStore) DeleteRecord(att ipam.Attachment) error {
	if err := m.mutate("DeleteRecord"); err != nil {
		return err
	}
	delete(m.garbageRecords, att)
	delete(m.records, att)
	return nil
}

func (m *memStore) Reserve(ip netip.Addr, att ipam.Attachment) error {
	if _, taken := m.reservations[ip]; taken || m.garbageReservations[ip] {
		return ipam.ErrReserved
	}
	if err := m.mutate("Reserve"); err != nil {
		return err
	}
	m.reservations[ip] = att
	return nil
}

func (m *memStore) Owner(ip netip.Addr) (ipam.Attachment, ipam.OwnerState, error) {
	if m.garbageReservations[ip] {
		return ipam.Attachment{}, ipam.Unreadable, nil
	}
	if att, ok := m.reservations[ip]; ok {
		return att, ipam.Owned, nil
	}
	return ipam.Attachment{}, ipam.Free, nil
}

func (m *memStore) Release(ip netip.Addr) error {
	if err := m.mutate("Release"); err != nil {
		return err
	}
	delete(m.reservations, ip)
	delete(m.garbageReservations, ip)
	return nil
}

func (m *memStore) Cursor(subnet netip.Prefix) netip.Addr { return m.cursors[subnet] }

func (m *memStore) SetCursor(subnet netip.Prefix, ip netip.Addr) error {
	if err := m.mutate("SetCursor"); err != nil {
		return err
	}
	m.cursors[subnet] = ip
	return nil
}

func (m *memStore) Scan() (ipam.Scan, error) {
	var s ipam.Scan
	for _, att := range slices.SortedFunc(maps.Keys(m.records), cmpAtt) {
		rec := m.records[att]
		rec.Allocations = slices.Clone(rec.Allocations)
		s.Records = append(s.Records, rec)
	}
	for att := range m.garbageRecords {
		s.Problems = append(s.Problems, "garbage record of "+att.ContainerID)
	}
	for _, ip := range slices.SortedFunc(maps.Keys(m.reservations), netip.Addr.Compare) {
		s.Reservations = append(s.Reservations, ipam.Reservation{IP: ip, Owner: m.reservations[ip], State: ipam.Owned})
	}
	for _, ip := range slices.SortedFunc(maps.Keys(m.garbageReservations), netip.Addr.Compare) {
		s.Reservations = append(s.Reservations, ipam.Reservation{IP: ip, State: ipam.Unreadable})
		s.Problems = append(s.Problems, "garbage reservation "+ip.String())
	}
	return s, nil
}

func cmpAtt(a, b ipam.Attachment) int {
	if a.ContainerID != b.ContainerID {
		if a.ContainerID < b.ContainerID {
			return -1
		}
		return 1
	}
	if a.IfName < b.IfName {
		return -1
	}
	if a.IfName > b.IfName {
		return 1
	}
	return 0
}

// errCrash stands for the process being killed: the mutation and every later
// one never happen.
var errCrash = errors.New("killed")
