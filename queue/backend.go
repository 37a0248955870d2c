package queue

import (
	"context"
	"time"
)

// Backend is the durable storage a Queue and its Workers run on. Every
// method is atomic; all state lives in the backend, so a process may die at
// any instruction and another resumes from what the backend holds. Times
// are passed in (never read from the backend's clock). The shared
// conformance suite in queuetest states the contract as tests; every
// backend runs it.
//
// Token-guarded calls (Ack, Nack, Bury) return ErrLeaseLost and change
// nothing when the message is no longer held under that token (its lease
// expired and another worker claimed it, or it was already settled).
type Backend interface {
	// Enqueue stores the messages durably, in order, and returns one result
	// per message. A message whose (Queue, DedupeID) was stored with an
	// unexpired dedupe window (including earlier in the same call) is not
	// stored; its result carries the first message's ID and Duplicate. A
	// message whose ID is still in the queue (not yet acknowledged or
	// dead-lettered) is not stored either and is reported Duplicate.
	Enqueue(ctx context.Context, req EnqueueRequest) ([]EnqueueResult, error)
	// Claim leases up to req.Limit messages of req.Queue that are available
	// (AvailableAt <= req.Now, or their previous lease lapsed), whose target
	// is neither disabled nor in req.Exclude, at most req.PerTarget per
	// target (0: no limit), oldest available first. Each claimed message's
	// attempt count goes up by one and it stays invisible to other claims
	// until req.LeaseUntil.
	Claim(ctx context.Context, req ClaimRequest) ([]Claimed, error)
	// Ack deletes a delivered message.
	Ack(ctx context.Context, queue, id string, token int64) error
	// Nack releases a message for another attempt at n.AvailableAt,
	// storing n.Attempts and n.History.
	Nack(ctx context.Context, n Nack) error
	// Bury moves a message to the dead-letter queue.
	Bury(ctx context.Context, b Burial) error

	// ListDead returns dead messages matching f, by Seq ascending, at most
	// f.Limit (0: no limit).
	ListDead(ctx context.Context, f DeadFilter) ([]DeadMessage, error)
	// GetDead returns one dead message, or ErrNotFound.
	GetDead(ctx context.Context, queue, id string) (*DeadMessage, error)
	// Requeue moves the given dead messages back to the queue, available at
	// now, with their attempts and history reset and their IDs kept. It
	// returns how many it moved (ids no longer dead are skipped).
	Requeue(ctx context.Context, queue string, ids []string, now time.Time) (int, error)
	// DeleteDead deletes the dead messages matching f and returns how many.
	DeleteDead(ctx context.Context, f DeadFilter) (int, error)

	// SetTarget records a target's state (disabling or enabling it).
	SetTarget(ctx context.Context, s TargetState) error
	// Targets returns the recorded target states of a queue.
	Targets(ctx context.Context, queue string) ([]TargetState, error)
}

// AckClaimer is implemented by a Backend that can acknowledge messages
// and claim new ones in one transaction (PostgreSQL): a Worker then sends
// the acknowledgements of the deliveries that finished since its last
// claim with the next claim, which it makes as soon as a delivery frees a
// slot, instead of one commit per acknowledgement.
type AckClaimer interface {
	// AckAndClaim acknowledges acks, each exactly as Ack would (ackErrs[i]
	// is nil or wraps ErrLeaseLost), then claims as Claim does, all in one
	// transaction. On a non-nil err the outcome is unknown: nothing took
	// effect when the server refused a statement, everything may have when
	// the answer was lost or could not be read. The caller then
	// acknowledges them again on their own (an acknowledgement that already
	// took effect answers ErrLeaseLost, which needs nothing).
	AckAndClaim(ctx context.Context, acks []AckRef, req ClaimRequest) (ackErrs []error, claimed []Claimed, err error)
}

// AckRef names a delivery to acknowledge: what Ack takes.
type AckRef struct {
	Queue, ID string
	Token     int64
}

// DedupeUntil is implemented by a Backend that keeps each enqueued
// message's DedupeID until that enqueue's EnqueueRequest.DedupeUntil,
// checked atomically with the write (SQLite, PostgreSQL): a caller may
// then make the enqueue its only dedupe, for a window of its choosing (the
// gateway's webhook routes do, for their retention). A Backend whose
// window is its own (JetStream's stream setting) or that has none (SQS)
// does not implement it, or returns false.
type DedupeUntil interface {
	HonorsDedupeUntil() bool
}

// HonorsDedupeUntil reports whether b implements DedupeUntil and says so.
func HonorsDedupeUntil(b Backend) bool {
	d, ok := b.(DedupeUntil)
	return ok && d.HonorsDedupeUntil()
}

// EnqueueRequest is the input of Backend.Enqueue. Messages have every
// field set (ID, Queue, EnqueuedAt); a message is available at EnqueuedAt.
type EnqueueRequest struct {
	Messages []*Message
	// Now decides whether a stored dedupe entry has expired.
	Now time.Time
	// DedupeUntil is when the new messages' dedupe entries expire.
	DedupeUntil time.Time
}

// EnqueueResult is the outcome of enqueueing one message.
type EnqueueResult struct {
	// ID is the stored message's id: the new one, or for a duplicate the
	// first message's.
	ID string
	// Duplicate is true when the message was not stored because its
	// DedupeID was seen within the window.
	Duplicate bool
}

// ClaimRequest is the input of Backend.Claim.
type ClaimRequest struct {
	Queue      string
	Now        time.Time
	LeaseUntil time.Time
	Limit      int
	PerTarget  int
	Exclude    []string
}

// Claimed is a message leased to a worker.
type Claimed struct {
	Message
	// Token identifies this lease; Ack, Nack and Bury need it.
	Token int64
	// Attempt is the attempt count including this one.
	Attempt int
	// History is the failed attempts recorded so far.
	History []Attempt
}

// Nack is the input of Backend.Nack.
type Nack struct {
	Queue, ID   string
	Token       int64
	Attempts    int
	History     []Attempt
	AvailableAt time.Time
}

// Burial is the input of Backend.Bury.
type Burial struct {
	Queue, ID string
	Token     int64
	Attempts  int
	History   []Attempt
	Reason    Reason
	At        time.Time
}
