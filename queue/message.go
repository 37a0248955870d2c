package queue

import (
	"net/http"
	"time"
)

// Message is one unit of work. The zero values of the optional fields are
// filled in by Queue.Enqueue.
type Message struct {
	// ID identifies the message for its whole life, across retries, the
	// DLQ and replays; an idempotent consumer dedupes on it. Enqueue
	// generates a random one when empty. At most 255 bytes.
	ID string
	// Queue is the queue's name; Enqueue sets it to the Queue's name.
	Queue string
	// Target names where the message goes (an endpoint, a partner, a
	// tenant). Scheduling is fair per target, and a target can be disabled.
	// Empty is a target like any other.
	Target string
	// Payload is delivered as is.
	Payload []byte
	// Headers are delivered as is (for HTTP targets, request headers).
	Headers http.Header
	// DedupeID, when set, makes Enqueue idempotent: a second message with
	// the same DedupeID on the same queue within Config.DedupeWindow is
	// not stored, and Enqueue returns the first message's ID.
	DedupeID string
	// EnqueuedAt is when the message was accepted; Enqueue sets it.
	EnqueuedAt time.Time
}

// Delivery is a message handed to a Handler.
type Delivery struct {
	Message
	// Attempt is this delivery's number, from 1. It counts attempts whose
	// worker crashed before recording an outcome.
	Attempt int
}

// Attempt records one failed delivery attempt.
type Attempt struct {
	// N is the attempt number, from 1.
	N int `json:"n"`
	// StartedAt and FailedAt bound the attempt (FailedAt is when the
	// failure was recorded; for a lost lease, when it was noticed).
	StartedAt time.Time `json:"started_at"`
	FailedAt  time.Time `json:"failed_at"`
	// Error is the handler's error text.
	Error string `json:"error"`
	// Status is the HTTP status when the handler returned an *HTTPError,
	// else 0.
	Status int `json:"status,omitempty"`
	// Body is the first bytes (at most MaxBodyBytes) of the HTTP response
	// body when the handler returned an *HTTPError.
	Body []byte `json:"body,omitempty"`
}

// MaxBodyBytes is how much of an HTTPError's body an Attempt keeps.
const MaxBodyBytes = 512

// Reason says why a message is in the DLQ.
type Reason string

// The reasons a message is dead-lettered.
const (
	// ReasonMaxAttempts: the last allowed attempt failed.
	ReasonMaxAttempts Reason = "max_attempts"
	// ReasonPermanent: the handler returned an error marked Permanent.
	ReasonPermanent Reason = "permanent"
	// ReasonTargetGone: the target answered 410 Gone (or the handler
	// returned ErrTargetGone); the target was disabled.
	ReasonTargetGone Reason = "target_gone"
)

// DeadMessage is a message in the dead-letter queue.
type DeadMessage struct {
	Message
	// Seq orders dead messages (oldest first) and serves as the List cursor.
	Seq int64
	// Reason is why the message was dead-lettered.
	Reason Reason
	// Attempts is how many attempts were made.
	Attempts int
	// History holds every failed attempt, oldest first.
	History []Attempt
	// FirstFailure and LastFailure are the first and last attempts' failure
	// times; DeadAt is when it entered the DLQ.
	FirstFailure, LastFailure, DeadAt time.Time
}

// DeadFilter selects dead messages. Zero fields match everything.
type DeadFilter struct {
	// Queue is set by Queue's methods to its own name.
	Queue string
	// IDs, when non-empty, restricts the selection to these message ids.
	IDs []string
	// Target and Reason match exactly when non-empty.
	Target string
	Reason Reason
	// DeadBefore and DeadAfter bound DeadAt (exclusive) when non-zero;
	// "older than an hour" is DeadBefore: now.Add(-time.Hour).
	DeadBefore, DeadAfter time.Time
	// AfterSeq skips dead messages with Seq <= AfterSeq (the paging cursor).
	AfterSeq int64
	// Limit caps the number returned by a list; 0 means 100 for List, no
	// limit for Purge and Replay.
	Limit int
}

// TargetState reports a target's state.
type TargetState struct {
	Queue, Target string
	// Disabled targets receive no deliveries; their messages wait.
	Disabled bool
	// Reason is the error that disabled it.
	Reason string
	// Since is when the state was set.
	Since time.Time
}
