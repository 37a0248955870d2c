package idempotency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Errors returned by Engine.Begin and Engine.Do. Compare with errors.Is.
var (
	// ErrMismatch means the key was used before with a different request
	// fingerprint. The function or handler did not run. HTTP: 422.
	ErrMismatch = errors.New("idempotency: key reused with a different request")

	// ErrInFlight means another caller holds the key and has not finished.
	// The error is an *InFlightError carrying a retry hint. HTTP: 409.
	ErrInFlight = errors.New("idempotency: a request with this key is in progress")

	// ErrStoreUnavailable wraps every store failure the engine meets; the
	// error is a *StoreError naming the operation. HTTP: 503 (fail closed)
	// unless Options.FailOpen is set.
	ErrStoreUnavailable = errors.New("idempotency: store unavailable")

	// ErrOutcomeUnknown means a request may or may not have taken effect.
	// It has two uses, both matched with errors.Is:
	//   - a function run by Engine.Do returns an error matching it (wrap
	//     the cause with UnknownOutcome) to say that it does not know
	//     whether its effect happened; the key is then held in
	//     StateUnknown instead of released;
	//   - Begin and Do return it, as an *OutcomeUnknownError, when the key
	//     is held that way: nothing ran. HTTP: 409
	//     idempotency-outcome-unknown.
	ErrOutcomeUnknown = errors.New("idempotency: outcome unknown")
)

// UnknownOutcome returns an error that wraps cause and matches
// ErrOutcomeUnknown: returned by a function run through Engine.Do, it
// holds the key (see ErrOutcomeUnknown). A nil cause gives an error that
// only matches ErrOutcomeUnknown.
func UnknownOutcome(cause error) error {
	if cause == nil {
		return ErrOutcomeUnknown
	}
	return &unknownOutcome{cause}
}

type unknownOutcome struct{ cause error }

func (e *unknownOutcome) Error() string   { return "idempotency: outcome unknown: " + e.cause.Error() }
func (e *unknownOutcome) Unwrap() []error { return []error{ErrOutcomeUnknown, e.cause} }

// OutcomeUnknownError is returned (matching ErrOutcomeUnknown) by Begin
// and Do when the key is held in StateUnknown: an earlier request with it
// may have taken effect, so nothing runs until an operator resolves the
// key (Engine.Resolve) or its retention ends.
type OutcomeUnknownError struct {
	// Since is when the outcome became unknown (the record's LeaseUntil).
	Since time.Time
	// Until is when the retention ends and the key becomes new again.
	Until time.Time
}

func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("%v: an earlier request with this key may have taken effect (held since %s until %s or an operator resolves it)",
		ErrOutcomeUnknown, e.Since.UTC().Format(time.RFC3339), e.Until.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrOutcomeUnknown) true.
func (e *OutcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// InFlightError is returned (wrapping ErrInFlight) when a duplicate arrives
// while the first request still runs.
type InFlightError struct {
	// RetryAfter is a hint of how long to wait before retrying.
	RetryAfter time.Duration
}

func (e *InFlightError) Error() string {
	return fmt.Sprintf("%v (retry after %v)", ErrInFlight, e.RetryAfter)
}

// Is makes errors.Is(err, ErrInFlight) true.
func (e *InFlightError) Is(target error) bool { return target == ErrInFlight }

// StoreError is a store failure met by the engine. It matches both
// ErrStoreUnavailable and the underlying error with errors.Is.
type StoreError struct {
	Op  string // claim, renew, complete, release, mark_unknown, lookup or list
	Err error
}

func (e *StoreError) Error() string {
	return fmt.Sprintf("idempotency: store %s: %v", e.Op, e.Err)
}

// Unwrap returns ErrStoreUnavailable and the store's own error.
func (e *StoreError) Unwrap() []error { return []error{ErrStoreUnavailable, e.Err} }

// Outcome classifies what happened to one request or call; it is the label
// of levee's idempotency metrics.
type Outcome string

// Outcomes reported through Options.OnEvent.
const (
	OutcomeExecuted    Outcome = "executed"    // ran; the response was stored
	OutcomeReleased    Outcome = "released"    // ran and failed; the claim was released so a retry runs again
	OutcomeUnknown     Outcome = "unknown"     // ran, outcome unknown; the key is held (StateUnknown) and never re-executed automatically
	OutcomeHeld        Outcome = "held"        // the key is held with an unknown outcome; nothing ran (409 idempotency-outcome-unknown)
	OutcomeReplayed    Outcome = "replayed"    // a stored response was returned; nothing ran
	OutcomeConflict    Outcome = "conflict"    // in flight elsewhere; nothing ran (409)
	OutcomeMismatch    Outcome = "mismatch"    // key reused with another request; nothing ran (422)
	OutcomeStoreError  Outcome = "store_error" // the store failed; nothing ran (503)
	OutcomeFailOpen    Outcome = "fail_open"   // the store failed; ran without protection (Options.FailOpen)
	OutcomeNotRecorded Outcome = "not_recorded"
	OutcomeInvalid     Outcome = "invalid"     // malformed or missing key, body too large (HTTP only)
	OutcomeCanceled    Outcome = "canceled"    // the caller went away before anything ran (context canceled, body unreadable)
	OutcomePassthrough Outcome = "passthrough" // not covered: method not configured, or optional key absent
)

// Event is passed to Options.OnEvent once per request or Do call.
//
// An OutcomeUnknown event deserves a WARN log line carrying the request id
// (which the hook's ctx holds): an operator must reconcile the key with
// the upstream and resolve it. Its Err is the cause the handler or
// function reported, joined with the store's error if the key could not
// be held (the claim then lapses with its lease, and a retry after it
// executes again). A handler that reports an unknown outcome on a route
// with UnknownOutcomeRelease yields OutcomeReleased with an Err matching
// ErrOutcomeUnknown.
type Event struct {
	Outcome Outcome
	// Key is the scoped key (as stored; see ScopedKey), empty for
	// outcomes decided before the key was known (invalid, passthrough).
	// It is a hash, safe to log, and what Engine.Inspect and
	// Engine.Resolve take.
	Key string
	// Err is the error behind store_error, fail_open, not_recorded,
	// released, unknown, held or invalid outcomes, if any.
	Err error
}

// Options configure an Engine. The zero value is a sensible default.
type Options struct {
	// Lease is how long a claim is held without renewal before another
	// caller may take it over. The holder renews it while it runs, so it
	// only bounds how long a crashed holder blocks retries. Default 30s.
	Lease time.Duration
	// RenewEvery is the renewal period while a holder runs. Default Lease/3.
	// Negative disables renewal (the lease then caps the execution time).
	RenewEvery time.Duration
	// Retention is how long a completed response is replayed. Default 24h.
	Retention time.Duration
	// InFlightWait is how long a duplicate waits for the first request to
	// finish, then replays its response. Zero (the default) answers
	// ErrInFlight at once.
	InFlightWait time.Duration
	// PollInterval is how often a waiting duplicate looks the key up.
	// Default 50ms.
	PollInterval time.Duration
	// RetryAfter is the retry hint of InFlightError and of store failures.
	// Default 1s.
	RetryAfter time.Duration
	// StoreTimeout bounds every store call so that an unreachable store
	// fails fast instead of hanging. Default 5s; negative disables it.
	StoreTimeout time.Duration
	// FailOpen executes requests without protection when the store fails
	// on the claim. Default false: fail closed (ErrStoreUnavailable, 503).
	FailOpen bool
	// Now is the clock. Default time.Now. Replicas sharing a store must
	// keep their clocks within a small fraction of Lease of each other.
	Now func() time.Time
	// OnEvent, if set, is called once per request or Do call with its
	// outcome. It must be safe for concurrent use and should not block.
	OnEvent func(ctx context.Context, ev Event)
}

func (o Options) withDefaults() Options {
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.RenewEvery == 0 {
		o.RenewEvery = o.Lease / 3
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	if o.StoreTimeout == 0 {
		o.StoreTimeout = DefaultStoreTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Engine runs requests at most once per key on top of a Store. It is safe
// for concurrent use; any number of engines (replicas) may share a store.
type Engine struct {
	store Store
	opts  Options
	local bool // store is in-process: no timeouts needed
}

// New returns an Engine over store.
func New(store Store, opts Options) *Engine {
	return &Engine{store: store, opts: opts.withDefaults(), local: store.Features().InProcess}
}

// Options returns the engine's options with defaults applied.
func (e *Engine) Options() Options { return e.opts }

func (e *Engine) emit(ctx context.Context, o Outcome, key string, err error) {
	if e.opts.OnEvent != nil {
		e.opts.OnEvent(ctx, Event{Outcome: o, Key: key, Err: err})
	}
}

// storeCtx bounds one store call by StoreTimeout.
func (e *Engine) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if e.local || e.opts.StoreTimeout < 0 {
		return ctx, noop
	}
	return context.WithTimeout(ctx, e.opts.StoreTimeout)
}

// detachedCtx is storeCtx for writes that must survive the caller's
// cancellation (Complete, Release): work already done must be recorded.
func (e *Engine) detachedCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if e.local {
		return context.Background(), noop
	}
	return e.storeCtx(context.WithoutCancel(ctx))
}

func noop() {}

// Begin claims key for a request with fingerprint fp. Exactly one of its
// results is meaningful:
//   - a non-nil *Lease: the caller must execute, then call Lease.Complete
//     or Lease.Release (the lease is renewed in the background until then);
//   - a non-nil *Record: the key completed earlier; replay Record.Response;
//   - an error: ErrMismatch, ErrInFlight (an *InFlightError),
//     ErrOutcomeUnknown (an *OutcomeUnknownError: the key is held after
//     an unknown outcome), a *StoreError (ErrStoreUnavailable), or ctx's
//     error while waiting.
//
// Fingerprint mismatch is checked before any state, so a reused key with
// another body gets ErrMismatch even while the first is running or held.
func (e *Engine) Begin(ctx context.Context, key string, fp Fingerprint) (*Lease, *Record, error) {
	var deadline time.Time
	for attempt := 0; ; attempt++ {
		now := e.opts.Now()
		token := NewToken()
		sctx, cancel := e.storeCtx(ctx)
		res, err := e.store.Claim(sctx, ClaimRequest{
			Key: key, Fingerprint: fp, Token: token, Now: now,
			LeaseUntil: now.Add(e.opts.Lease), ExpiresAt: now.Add(e.opts.Retention),
		})
		cancel()
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, nil, cerr // the caller gave up: not a store failure
			}
			return nil, nil, &StoreError{Op: "claim", Err: err}
		}
		if res.Claimed {
			return e.newLease(key, token, now.Add(e.opts.Retention)), nil, nil
		}
		rec := res.Existing
		if rec == nil {
			// The blocking record vanished between the store's attempt and
			// its read (released or expired): claim again.
			if attempt < 8 {
				continue
			}
			return nil, nil, &StoreError{Op: "claim", Err: errors.New("record kept vanishing under concurrent claims")}
		}
		if rec.Fingerprint != fp {
			return nil, nil, ErrMismatch
		}
		if rec.State == StateCompleted {
			return nil, rec, nil
		}
		if rec.State == StateUnknown {
			return nil, nil, heldError(rec)
		}
		if e.opts.InFlightWait <= 0 {
			return nil, nil, &InFlightError{RetryAfter: e.opts.RetryAfter}
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(e.opts.InFlightWait)
		}
		rec, err = e.waitForCompletion(ctx, key, fp, deadline)
		if err != nil || rec != nil {
			return nil, rec, err
		}
		// Released or expired while we waited: try to claim it ourselves.
	}
}

// waitForCompletion polls key until it completes (returns the record),
// disappears (returns nil, nil: the caller claims again) or the wait ends.
func (e *Engine) waitForCompletion(ctx context.Context, key string, fp Fingerprint, deadline time.Time) (*Record, error) {
	t := time.NewTimer(e.opts.PollInterval)
	defer t.Stop()
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, &InFlightError{RetryAfter: e.opts.RetryAfter}
		}
		t.Reset(min(e.opts.PollInterval, remaining))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		sctx, cancel := e.storeCtx(ctx)
		rec, err := e.store.Lookup(sctx, key, e.opts.Now())
		cancel()
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, nil
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			// The store already said the key is in flight; a failed poll
			// must not turn into a store failure (which FailOpen would
			// answer by executing a duplicate).
			return nil, &InFlightError{RetryAfter: e.opts.RetryAfter}
		case rec.Fingerprint != fp:
			return nil, ErrMismatch
		case rec.State == StateCompleted:
			return rec, nil
		case rec.State == StateUnknown:
			return nil, heldError(rec)
		case rec.Claimable(e.opts.Now()):
			return nil, nil // holder died: take it over
		}
	}
}

func heldError(rec *Record) error {
	return &OutcomeUnknownError{Since: rec.LeaseUntil, Until: rec.ExpiresAt}
}

// Lease is a held claim on a key. Exactly one of Complete, Release or
// MarkUnknown must be called; until then the lease is renewed in the
// background. Methods are safe for concurrent use.
type Lease struct {
	e         *Engine
	key       string
	token     uint64
	expiresAt time.Time // retention of the in-progress record; renewal keeps it ≥ the lease

	mu    sync.Mutex
	timer *time.Timer
	done  bool
	lost  error // set when renewal found the claim fenced
}

func (e *Engine) newLease(key string, token uint64, expiresAt time.Time) *Lease {
	l := &Lease{e: e, key: key, token: token, expiresAt: expiresAt}
	if e.opts.RenewEvery > 0 {
		// Under the lock: the timer may fire before AfterFunc returns, and
		// renew must then wait for l.timer to be set.
		l.mu.Lock()
		l.timer = time.AfterFunc(e.opts.RenewEvery, l.renew)
		l.mu.Unlock()
	}
	return l
}

// Token returns the lease's fencing token.
func (l *Lease) Token() uint64 { return l.token }

// Lost reports whether a renewal found the claim no longer held by this
// lease (it lapsed and another caller took the key over). Complete will
// then return ErrFenced; a long-running holder may check Lost to stop
// early.
func (l *Lease) Lost() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost != nil
}

func (l *Lease) renew() {
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	now := l.e.opts.Now()
	leaseUntil := now.Add(l.e.opts.Lease)
	if leaseUntil.After(l.expiresAt) {
		// A holder running past the retention period keeps its record:
		// it must not expire, and be claimed again, under it.
		l.expiresAt = leaseUntil
	}
	expiresAt := l.expiresAt
	l.mu.Unlock()
	ctx, cancel := l.e.storeCtx(context.Background())
	err := l.e.store.Renew(ctx, l.key, l.token, now, leaseUntil, expiresAt)
	cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	if errors.Is(err, ErrFenced) {
		l.lost = err
		return
	}
	// A transient error is retried at the next period; the lease is three
	// periods long by default, so two failures in a row are survivable.
	l.timer.Reset(l.e.opts.RenewEvery)
}

func (l *Lease) finish() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return errors.New("idempotency: lease already completed or released")
	}
	l.done = true
	if l.timer != nil {
		l.timer.Stop()
	}
	return nil
}

// Complete stores resp as the key's outcome. It returns ErrFenced (wrapped)
// if the lease was lost — the key was taken over after the lease expired —
// in which case the newer holder's record is left untouched, or a
// *StoreError if the store failed. It ignores ctx cancellation, so that a
// client hanging up does not lose the record of work already done.
func (l *Lease) Complete(ctx context.Context, resp Response) error {
	if err := l.finish(); err != nil {
		return err
	}
	sctx, cancel := l.e.detachedCtx(ctx)
	defer cancel()
	now := l.e.opts.Now()
	err := l.e.store.Complete(sctx, l.key, l.token, resp, now, now.Add(l.e.opts.Retention))
	if err != nil {
		if errors.Is(err, ErrFenced) {
			return err
		}
		return &StoreError{Op: "complete", Err: err}
	}
	return nil
}

// Release gives the key up so that a retry executes again. Like Complete it
// returns ErrFenced if the lease was lost, and ignores ctx cancellation.
func (l *Lease) Release(ctx context.Context) error {
	if err := l.finish(); err != nil {
		return err
	}
	sctx, cancel := l.e.detachedCtx(ctx)
	defer cancel()
	err := l.e.store.Release(sctx, l.key, l.token)
	if err != nil && !errors.Is(err, ErrFenced) {
		return &StoreError{Op: "release", Err: err}
	}
	return err
}

// MarkUnknown records that the request's outcome is unknown (it may have
// taken effect): the key moves to StateUnknown and is held — retries get
// ErrOutcomeUnknown and never execute — until an operator resolves it
// (Engine.Resolve) or Options.Retention, counted from now, ends. Like
// Complete it returns ErrFenced if the lease was lost, a *StoreError if
// the store failed (the claim then lapses with its lease), and ignores ctx
// cancellation.
func (l *Lease) MarkUnknown(ctx context.Context) error {
	if err := l.finish(); err != nil {
		return err
	}
	sctx, cancel := l.e.detachedCtx(ctx)
	defer cancel()
	now := l.e.opts.Now()
	err := l.e.store.MarkUnknown(sctx, l.key, l.token, now, now.Add(l.e.opts.Retention))
	if err != nil && !errors.Is(err, ErrFenced) {
		return &StoreError{Op: "mark_unknown", Err: err}
	}
	return err
}

// Result is what Engine.Do returns.
type Result struct {
	// Value is fn's result, freshly computed or replayed.
	Value []byte
	// Replayed reports that Value is a stored result and fn did not run.
	Replayed bool
}

// Do runs fn at most once for key: a later call with the same key and
// fingerprint returns the stored result without running fn.
//
// What happens on every path:
//   - first call: fn runs; on success its result is stored and returned;
//   - fn returns an error or panics: the claim is released (a retry runs
//     fn again), and the error is returned or the panic re-raised;
//   - fn returns an error matching ErrOutcomeUnknown (see UnknownOutcome):
//     the key is held in StateUnknown (Lease.MarkUnknown) and fn's error
//     is returned (joined with the store's error if the hold failed);
//     later calls get an *OutcomeUnknownError and fn does not run, until
//     Engine.Resolve or the retention ends;
//   - duplicate after success: the stored result, Replayed true;
//   - duplicate while the first runs: ErrInFlight, or with InFlightWait
//     the stored result once the first finishes;
//   - same key, other fingerprint: ErrMismatch, fn does not run;
//   - store failure before fn: a *StoreError (fn does not run), or with
//     FailOpen fn runs unprotected;
//   - fn succeeded but its result could not be recorded (store failure or
//     lost lease): the result AND an error wrapping the cause are
//     returned, so the caller can both use the result and alert.
func (e *Engine) Do(ctx context.Context, key string, fp Fingerprint, fn func(context.Context) ([]byte, error)) (Result, error) {
	lease, rec, err := e.Begin(ctx, key, fp)
	switch {
	case err != nil && e.opts.FailOpen && errors.Is(err, ErrStoreUnavailable):
		e.emit(ctx, OutcomeFailOpen, key, err)
		v, ferr := fn(ctx)
		return Result{Value: v}, ferr
	case err != nil:
		e.emit(ctx, outcomeOf(err), key, err)
		return Result{}, err
	case rec != nil:
		e.emit(ctx, OutcomeReplayed, key, nil)
		return Result{Value: rec.Response.Body, Replayed: true}, nil
	}
	var v []byte
	func() {
		finished := false
		defer func() {
			if finished {
				return
			}
			// fn panicked or called runtime.Goexit: release the claim.
			p := recover()
			_ = lease.Release(ctx)
			e.emit(ctx, OutcomeReleased, key, fmt.Errorf("function did not return normally: %v", p))
			if p != nil {
				panic(p)
			}
		}()
		v, err = fn(ctx)
		finished = true
	}()
	if err != nil && errors.Is(err, ErrOutcomeUnknown) {
		if herr := lease.MarkUnknown(ctx); herr != nil {
			err = errors.Join(err, herr)
		}
		e.emit(ctx, OutcomeUnknown, key, err)
		return Result{}, err
	}
	if err != nil {
		if rerr := lease.Release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		e.emit(ctx, OutcomeReleased, key, err)
		return Result{}, err
	}
	if cerr := lease.Complete(ctx, Response{Body: v}); cerr != nil {
		cerr = fmt.Errorf("idempotency: executed but the result was not recorded: %w", cerr)
		e.emit(ctx, OutcomeNotRecorded, key, cerr)
		return Result{Value: v}, cerr
	}
	e.emit(ctx, OutcomeExecuted, key, nil)
	return Result{Value: v}, nil
}

// outcomeOf maps a Begin error to its Outcome.
func outcomeOf(err error) Outcome {
	switch {
	case errors.Is(err, ErrMismatch):
		return OutcomeMismatch
	case errors.Is(err, ErrInFlight):
		return OutcomeConflict
	case errors.Is(err, ErrOutcomeUnknown):
		return OutcomeHeld
	case errors.Is(err, ErrStoreUnavailable):
		return OutcomeStoreError
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return OutcomeCanceled
	}
	return OutcomeInvalid
}
