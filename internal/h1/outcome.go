// Package h1 is levee's HTTP/1.1 engine: the wire-level layer below the
// gateway's policies. Today it holds the classification of upstream
// failures every transport path shares (OutcomeUnknown); the front
// server, request and response parsers and upstream client join it.
package h1

import (
	"context"
	"errors"
	"net/http/httptrace"
	"sync/atomic"
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

// TraceWrote returns ctx with an httptrace.ClientTrace (composed with any
// already there) that notes when net/http's Transport has written the
// whole request, and a function reporting it. With it a caller of
// http.Transport can tell "sent, outcome unknown" from "not sent": mark
// the RoundTrip error with Unknown when wrote() is true. It reports false
// when the Transport failed writing (or never wrote) the request.
func TraceWrote(ctx context.Context) (_ context.Context, wrote func() bool) {
	done := new(atomic.Bool) // written by the Transport's writing goroutine
	trace := &httptrace.ClientTrace{WroteRequest: func(info httptrace.WroteRequestInfo) {
		done.Store(info.Err == nil)
	}}
	return httptrace.WithClientTrace(ctx, trace), done.Load
}
