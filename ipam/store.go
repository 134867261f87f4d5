package ipam

import (
	"errors"
	"net/netip"
)

// Attachment identifies one interface of one container, the unit that CNI
// allocates for.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// Allocation is one address handed to an attachment.
type Allocation struct {
	// Address carries the range's prefix length, as the CNI result does.
	Address netip.Prefix `json:"address"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
}

// Record lists everything an attachment holds. It is written before any
// address is reserved and removed only after all are released, so that every
// reservation is always reachable from its attachment's record: a process
// killed at any instant leaves nothing that DEL or GC cannot find.
type Record struct {
	Attachment
	Allocations []Allocation `json:"allocations"`
}

// OwnerState tells what a reservation says about an address.
type OwnerState int

const (
	// Free: no reservation exists.
	Free OwnerState = iota
	// Owned: reserved, and the owner is readable.
	Owned
	// Unreadable: reserved, but the reservation's content is garbage. The
	// address stays taken: handing it out again could duplicate it.
	Unreadable
)

// Reservation is one reserved address as found by a scan.
type Reservation struct {
	IP    netip.Addr
	Owner Attachment
	State OwnerState
}

// Scan is the whole content of a store, with what could not be read.
type Scan struct {
	Records      []Record
	Reservations []Reservation
	// Problems names each file that was garbage and was ignored.
	Problems []string
}

// ErrReserved is returned by Reserve when the address is already taken.
var ErrReserved = errors.New("address already reserved")

// ErrUnreadable is returned for a record or reservation whose content is garbage.
var ErrUnreadable = errors.New("unreadable store entry")

// Store persists allocations. All mutating calls are made while the caller
// holds the store's lock; the implementation need not serialise them itself.
type Store interface {
	// Record returns the record of att; found is false when there is none.
	// A garbage record yields ErrUnreadable.
	Record(att Attachment) (rec Record, found bool, err error)
	PutRecord(rec Record) error
	DeleteRecord(att Attachment) error
	// Reserve takes ip for att atomically, or returns ErrReserved.
	Reserve(ip netip.Addr, att Attachment) error
	Owner(ip netip.Addr) (Attachment, OwnerState, error)
	// Release drops the reservation of ip whoever holds it.
	Release(ip netip.Addr) error
	// Cursor is the last address handed out from a range, a hint only: the
	// zero Addr when unknown.
	Cursor(subnet netip.Prefix) netip.Addr
	SetCursor(subnet netip.Prefix, ip netip.Addr) error
	Scan() (Scan, error)
}
