package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinel errors a Store returns. Callers compare them with errors.Is.
var (
	// ErrFenced means the fencing token presented to Renew, Complete or
	// Release no longer owns the record: the lease expired and another
	// caller claimed the key, the record was released or completed, or it
	// expired. The store left the record untouched.
	ErrFenced = errors.New("idempotency: fenced: the claim is no longer held by this token")

	// ErrNotFound means Lookup found no live record for the key.
	ErrNotFound = errors.New("idempotency: record not found")

	// ErrCapacity means a bounded store refused a new record because it is
	// full of live records. The engine treats it like any store failure
	// (503 by default); it never evicts a live record, since that would let
	// a duplicate execute twice.
	ErrCapacity = errors.New("idempotency: store is at capacity")
)

// State is the lifecycle state of a Record.
type State uint8

const (
	// StateInProgress marks a claimed key whose holder has not finished.
	StateInProgress State = 1
	// StateCompleted marks a key whose response is stored.
	StateCompleted State = 2
	// StateUnknown marks a key whose request may or may not have taken
	// effect: the holder reported an unknown outcome (the whole request
	// reached the upstream, then the answer was lost) with
	// Store.MarkUnknown. A lapsed lease never makes it claimable; only the
	// end of its retention, or an operator resolving it (Complete or
	// Release with its token, see Engine.Resolve), does.
	StateUnknown State = 3
)

// String returns "in_progress", "completed" or "unknown" ("State(N)" for
// any other value).
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in_progress"
	case StateCompleted:
		return "completed"
	case StateUnknown:
		return "unknown"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// ParseState parses the String form of a State. It returns an error
// wrapping ErrInvalidState for any other text.
func ParseState(s string) (State, error) {
	switch s {
	case "in_progress":
		return StateInProgress, nil
	case "completed":
		return StateCompleted, nil
	case "unknown":
		return StateUnknown, nil
	}
	return 0, fmt.Errorf("%w %q (want in_progress, completed or unknown)", ErrInvalidState, s)
}

// ErrInvalidState is wrapped by ParseState for text that names no State.
var ErrInvalidState = errors.New("idempotency: invalid state")

// Fingerprint is the SHA-256 digest of what makes two requests "the same":
// method, path, query, canonical body and configured headers. Two requests
// under one key with different fingerprints are refused (ErrMismatch).
type Fingerprint [32]byte

// Response is the stored outcome of an executed request: the HTTP status,
// the allow-listed response headers and the body, byte for byte. Plain
// functions run through Engine.Do store only Body (Status 0, no headers).
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	// BodyOmitted reports that the body exceeded the configured cap and was
	// not stored. The request did execute; a replay must say so rather than
	// run it again (see the middleware's response-not-stored problem).
	BodyOmitted bool
}

// Record is one idempotency key as a store holds it.
type Record struct {
	// Key is the scoped key (route + tenant + client key, hashed).
	Key         string
	Fingerprint Fingerprint
	State       State
	// Token is the fencing token of the claim that created the record.
	Token uint64
	// LeaseUntil is when an in-progress claim may be taken over. For a
	// record in StateUnknown it is when the holder reported the unknown
	// outcome (the lease ended then, and no longer matters).
	LeaseUntil time.Time
	// ExpiresAt ends the retention period; after it the record counts as
	// absent whatever the store's own TTL machinery has done.
	ExpiresAt time.Time
	// Response is set when State is StateCompleted.
	Response *Response
}

// Features declares what a Store offers beyond the methods every store
// implements. The engine and the conformance suite (idemtest) read it;
// a wrapper that embeds a Store forwards it without writing any code.
// The zero value is a networked store with no optional capability.
type Features struct {
	// InProcess reports that the store never waits on I/O (the memory
	// store): the engine then skips the per-call StoreTimeout and runs
	// Complete and Release detached from cancellation without allocating
	// a context.
	InProcess bool
	// List reports that Store.List works. A store without it returns an
	// error matching ErrListUnsupported (and errors.ErrUnsupported) from
	// List.
	List bool
}

// ErrListUnsupported is returned (it matches errors.ErrUnsupported too) by
// Store.List and Engine.List on a store whose Features().List is false.
var ErrListUnsupported = fmt.Errorf("idempotency: this store cannot list records by state: %w", errors.ErrUnsupported)

// ListRequest asks a Store for the live records in one state.
type ListRequest struct {
	// State is StateInProgress or StateUnknown (completed records are not
	// listed: there are many, and nothing needs doing about them).
	State State
	// Now is the engine's clock: records expired at Now are left out.
	Now time.Time
	// After is the page cursor: only keys greater than After (byte-wise)
	// are listed. "" starts at the beginning; pass the Key of the last
	// record of a page to get the next one.
	After string
	// Limit is the most records returned, at least 1.
	Limit int
}

// live reports whether r still counts at now (retention is checked
// logically, never left to a store's lazy TTL).
func (r *Record) live(now time.Time) bool { return now.Before(r.ExpiresAt) }

// Claimable reports whether a claim made at now may replace r: r has
// expired, or it is in progress and its lease has lapsed. A completed or
// unknown record is claimable only once expired. Every Store implements
// exactly this rule, atomically.
func (r *Record) Claimable(now time.Time) bool {
	if !r.live(now) {
		return true
	}
	return r.State == StateInProgress && !now.Before(r.LeaseUntil)
}

// ClaimRequest asks a Store to claim Key.
type ClaimRequest struct {
	Key         string
	Fingerprint Fingerprint
	// Token is the fencing token for the new claim, chosen by the engine
	// (see NewToken): unique per claim, never zero, below 2^63.
	Token uint64
	// Now is the engine's clock reading for this decision.
	Now time.Time
	// LeaseUntil and ExpiresAt are stored on the new record.
	LeaseUntil time.Time
	ExpiresAt  time.Time
}

// ClaimResult is the answer to a claim.
type ClaimResult struct {
	// Claimed reports that the caller now holds the key with the request's
	// token and must execute, then Complete or Release.
	Claimed bool
	// Existing is the live record that blocked the claim, returned in the
	// same round trip, when Claimed is false. It may be nil only when the
	// blocking record vanished between the attempt and the read (a race the
	// engine resolves by claiming again).
	Existing *Record
}

// Store persists idempotency records. Every method is atomic with respect
// to every other call on the same key, across processes sharing the
// backend. Times must be kept to at least millisecond precision; expiry is
// decided from the times passed in (the engine's clock), never from the
// backend's lazy TTL, which is only a clean-up aid. Implementations must pass idemtest.Run. Each method should cost
// one round trip to the backend: the engine's new-request path is Claim +
// Complete, and a replay is a single Claim.
type Store interface {
	// Claim creates an in-progress record for req.Key holding req.Token if
	// no record exists or the existing one is Claimable at req.Now;
	// otherwise it changes nothing and returns the existing record.
	Claim(ctx context.Context, req ClaimRequest) (ClaimResult, error)

	// Renew moves the lease of the in-progress record held by token to
	// leaseUntil and its retention to expiresAt (the engine keeps
	// expiresAt ≥ leaseUntil, so a record never expires under a holder
	// that is still renewing; now is the engine's clock, for relative
	// TTLs, which Renew may lengthen but never shorten). It returns
	// ErrFenced if the record is absent, completed, or held by another
	// token.
	Renew(ctx context.Context, key string, token uint64, now, leaseUntil, expiresAt time.Time) error

	// Complete stores resp on the in-progress or unknown record held by
	// token, marks it completed and sets its retention to expiresAt (now
	// is the engine's clock, for stores whose physical TTL is relative).
	// It returns ErrFenced if token no longer holds the record or the
	// record is already completed.
	Complete(ctx context.Context, key string, token uint64, resp Response, now, expiresAt time.Time) error

	// Release deletes the in-progress or unknown record held by token so
	// that a retry executes again. It returns ErrFenced if token no longer
	// holds it or the record is completed.
	Release(ctx context.Context, key string, token uint64) error

	// MarkUnknown moves the in-progress record held by token to
	// StateUnknown, sets its LeaseUntil to now (when the outcome became
	// unknown) and its retention to expiresAt. From then on no lease
	// expiry makes the key claimable: only its retention ending, or a
	// Complete or Release with the same token. It returns ErrFenced if
	// the record is absent, not in progress, or held by another token.
	MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error

	// Lookup returns the record for key if it is live at now, or ErrNotFound.
	Lookup(ctx context.Context, key string, now time.Time) (*Record, error)

	// List returns up to req.Limit live records in req.State with keys
	// greater than req.After, in ascending byte order of key, with their
	// responses left out. Fewer than req.Limit records means the end.
	// Records written while a listing pages through may or may not appear.
	// A store whose Features().List is false returns ErrListUnsupported.
	List(ctx context.Context, req ListRequest) ([]Record, error)

	// Features declares the store's optional capabilities. It does no I/O
	// and returns the same value on every call.
	Features() Features
}

// NewToken returns a fresh fencing token: 63 random bits, never zero.
// Tokens are compared for equality by the store inside the same atomic
// operation that changes the record, so uniqueness (not order) is what
// fencing needs; 63 bits keep them representable as a signed 64-bit
// integer in SQL backends.
func NewToken() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
		t := binary.LittleEndian.Uint64(b[:]) >> 1
		if t != 0 {
			return t
		}
	}
}
