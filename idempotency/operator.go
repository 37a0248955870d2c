package idempotency

import (
	"context"
	"errors"
	"fmt"
)

// What an operator tool (levee keys, the gateway's admin API) needs: find
// the stored key of a client's request, look at its record, resolve a key
// held after an unknown outcome, and list the keys that need attention.
// None of it emits events: the caller knows who asked and logs that.

// ErrNotResolvable is returned by Engine.Resolve for a record that is
// completed (there is nothing to resolve: retries already replay it), or
// in progress without Resolution.AllowInProgress.
var ErrNotResolvable = errors.New("idempotency: record is not in a state that can be resolved")

// KeyFor returns the store key the middleware uses for a request on the
// route named scope (HTTPOptions.Scope; the gateway uses the route name)
// that carries tenantCredential as the value of HTTPOptions.TenantHeader
// ("" when the route has none, or the header was absent) and keyHeader as
// the raw value of the idempotency key header. keyHeader is parsed as the
// middleware parses it (ParseKey: `"abc"` and `abc` are the same key), so
// the result is exactly the middleware's, and Event.Key reports the same
// string. It fails, wrapping ErrInvalidKey, when keyHeader is not a valid
// key (the middleware answers such a request 400 and stores nothing).
func KeyFor(scope, tenantCredential, keyHeader string) (string, error) {
	key, err := ParseKey(keyHeader)
	if err != nil {
		return "", err
	}
	return ScopedKey(scope, tenantCredential, key), nil
}

// Inspect returns the live record stored under the scoped key (see KeyFor):
// its state, fingerprint, token, times and, when completed, the stored
// response. It returns ErrNotFound when there is none (never stored,
// released, or past its retention), or a *StoreError when the store fails.
func (e *Engine) Inspect(ctx context.Context, key string) (*Record, error) {
	sctx, cancel := e.storeCtx(ctx)
	defer cancel()
	rec, err := e.store.Lookup(sctx, key, e.opts.Now())
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, ErrNotFound
	case err != nil:
		return nil, &StoreError{Op: "lookup", Err: err}
	}
	return rec, nil
}

// Resolution is an operator's decision about a held key, for Engine.Resolve.
type Resolution struct {
	// Response, if set, is stored as the key's outcome (the one found by
	// reconciling with the upstream): retries with the same fingerprint
	// replay it, byte for byte, for Options.Retention from now. Nil
	// releases the key: the next retry executes.
	Response *Response
	// Token, if not zero, is the record's token as Inspect returned it:
	// the resolution then applies only to that record, and fails with
	// ErrFenced if the key was resolved or claimed again since. Zero
	// resolves whatever record is held now (still atomically: a change
	// between Resolve's read and its write is ErrFenced).
	Token uint64
	// AllowInProgress lets Resolve act on an in-progress record, whose
	// holder may still be running (a stuck claim). The holder is then
	// fenced: its own Complete fails. Releasing such a key lets a retry
	// execute while the first may still take effect. Default false: only
	// records in StateUnknown are resolved.
	AllowInProgress bool
}

// Resolve settles the record under the scoped key (see KeyFor) held in
// StateUnknown (or, with AllowInProgress, in progress): it stores
// res.Response, or releases the key when res.Response is nil. It costs
// two store round trips (a lookup, then a fenced Complete or Release).
//
// It returns ErrNotFound if no live record exists, ErrNotResolvable if the
// record is completed or (without AllowInProgress) in progress, ErrFenced
// if the record is not res.Token's or changed between the read and the
// write (nothing was written; inspect it again), and a *StoreError if the
// store fails (the record may or may not have been written: inspect it).
func (e *Engine) Resolve(ctx context.Context, key string, res Resolution) error {
	rec, err := e.Inspect(ctx, key)
	if err != nil {
		return err
	}
	switch {
	case rec.State == StateUnknown:
	case rec.State == StateInProgress && res.AllowInProgress:
	default:
		return fmt.Errorf("%w: the record is %s", ErrNotResolvable, rec.State)
	}
	if res.Token != 0 && res.Token != rec.Token {
		return fmt.Errorf("idempotency: resolve: the record's token is not %d: %w", res.Token, ErrFenced)
	}
	sctx, cancel := e.detachedCtx(ctx)
	defer cancel()
	if res.Response == nil {
		err = e.store.Release(sctx, key, rec.Token)
		if err != nil && !errors.Is(err, ErrFenced) {
			return &StoreError{Op: "release", Err: err}
		}
		return err
	}
	now := e.opts.Now()
	err = e.store.Complete(sctx, key, rec.Token, *res.Response, now, now.Add(e.opts.Retention))
	if err != nil && !errors.Is(err, ErrFenced) {
		return &StoreError{Op: "complete", Err: err}
	}
	return err
}

// List returns up to limit live records in state (StateUnknown or
// StateInProgress) whose scoped keys sort after after, in key order,
// without responses; pass the last record's Key as after for the next
// page, and stop at a page shorter than limit (limit ≤ 0 means 100). It
// returns ErrListUnsupported at once when the store cannot list
// (Features().List is false), an error wrapping ErrInvalidState for any
// other state, and a *StoreError when the store fails.
func (e *Engine) List(ctx context.Context, state State, after string, limit int) ([]Record, error) {
	if !e.store.Features().List {
		return nil, ErrListUnsupported
	}
	if state != StateUnknown && state != StateInProgress {
		return nil, fmt.Errorf("%w: only %s and %s records can be listed, not %s", ErrInvalidState, StateUnknown, StateInProgress, state)
	}
	if limit <= 0 {
		limit = 100
	}
	sctx, cancel := e.storeCtx(ctx)
	defer cancel()
	recs, err := e.store.List(sctx, ListRequest{State: state, Now: e.opts.Now(), After: after, Limit: limit})
	if err != nil {
		return nil, &StoreError{Op: "list", Err: err}
	}
	return recs, nil
}
