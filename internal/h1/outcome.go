// Package h1 is levee's HTTP/1.1 engine, the wire-level layer below the
// gateway's policies and the security boundary clients and upstreams talk
// to. It owns:
//
//   - Server: levee's front server for the proxy listener (a strict
//     subset of HTTP/1.1 parsed in place, one goroutine per connection),
//     which hands every connection outside that subset to Go's net/http
//     server (request.go, server.go);
//   - the guard (GuardServer, GuardListener) through which net/http's
//     server reads every connection it serves: each head is checked as
//     net/http will check it, plus the framing rules of RFC 9112 section
//     6.1, and refusals are answered through the RejectFunc the gateway
//     passes in (guard.go);
//   - Transport: the upstream client for http:// upstreams, with its
//     no-duplicate retry rule, and its response parser (transport.go,
//     response.go); Eligible is the one rule for what it sends itself;
//   - the classification of upstream failures as "not sent" or "sent,
//     outcome unknown" shared by every transport path (OutcomeUnknown);
//   - the wire-level helpers (Token, ValidFieldValue, Tokens, HasToken).
//
// It knows nothing of routes, idempotency or rate limits, and imposes no
// error format: the gateway composes it.
package h1

import (
	"errors"
)

// UnknownOutcomeError marks an upstream failure after the whole request
// was written: the upstream may have acted on it (a timeout, a lost
// connection, a cut or malformed response head or body). Failures before
// that (the dial, a write that failed) are returned unmarked: nothing
// reached the upstream whole, so a retry cannot run it twice.
type UnknownOutcomeError struct{ Err error }

func (e *UnknownOutcomeError) Error() string {
	return "h1: request sent, outcome unknown: " + e.Err.Error()
}

// Unwrap returns the failure itself (timeouts stay recognisable).
func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// OutcomeUnknown reports whether err (or one it wraps) says the request
// was sent whole and its outcome is unknown. It is false for nil and for
// every "not sent" failure.
func OutcomeUnknown(err error) bool {
	var u *UnknownOutcomeError
	return errors.As(err, &u)
}

// Unknown marks err as an unknown outcome; nil stays nil and a marked
// error is returned as it is.
func Unknown(err error) error {
	if err == nil || OutcomeUnknown(err) {
		return err
	}
	return &UnknownOutcomeError{Err: err}
}
