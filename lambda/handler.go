package lambda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// HandlerOptions configure NewIdempotentHandler.
type HandlerOptions struct {
	Config
	// KeyPath is a JMESPath expression over the event (as JSON) selecting
	// its idempotency key, as Powertools' event_key_jmespath: for example
	// "orderId", "[customer, order_id]", or "powertools_json(body).id" to
	// reach into a JSON string. Whatever it selects (a string, a number,
	// an object...) is the key, in canonical JSON. Required.
	KeyPath string
	// ValidationPath, if set, is a JMESPath expression selecting the part
	// of the event that must be the same on a duplicate (Powertools'
	// payload_validation_jmespath): it is part of the fingerprint, and a
	// duplicate whose selection differs gets idempotency.ErrMismatch
	// without running. Default: only the key is fingerprinted (events
	// carry volatile metadata such as request ids and timestamps).
	ValidationPath string
	// Scope names the function; keys are scoped by it, so two functions
	// sharing a table with the same keys do not collide. Default "".
	Scope string
	// AllowMissingKey runs the handler unprotected when KeyPath selects
	// nothing. Default false: such an invocation fails with ErrNoKey and
	// the handler does not run.
	AllowMissingKey bool
}

// IdempotentHandler runs a typed Lambda handler at most once per key. It is safe
// for concurrent use. Pass it to lambda.Start (aws-lambda-go): it
// implements lambda.Handler.
type IdempotentHandler[In, Out any] struct {
	fn  func(context.Context, In) (Out, error)
	cfg Config
	sel selector

	allowMissing bool
}

// NewIdempotentHandler returns fn wrapped so that it runs once per key selected by
// opts.KeyPath. It fails, naming the field, when opts.Store is nil,
// opts.KeyPath is empty, or an expression does not compile (wrapping
// ErrExpression).
func NewIdempotentHandler[In, Out any](fn func(context.Context, In) (Out, error), opts HandlerOptions) (*IdempotentHandler[In, Out], error) {
	if err := opts.validate("NewIdempotentHandler"); err != nil {
		return nil, err
	}
	if opts.KeyPath == "" {
		return nil, errors.New("lambda: NewIdempotentHandler: HandlerOptions.KeyPath is empty")
	}
	sel, err := newSelector(opts.Scope, opts.KeyPath, opts.ValidationPath)
	if err != nil {
		return nil, err
	}
	return &IdempotentHandler[In, Out]{fn: fn, cfg: opts.Config, sel: sel, allowMissing: opts.AllowMissingKey}, nil
}

// Invoke runs the handler for one JSON event and returns its JSON result;
// it implements aws-lambda-go's lambda.Handler.
//
// On every path:
//   - first invocation with a key: fn runs; on success its result is
//     stored and returned; on error the claim is released (a retry runs
//     fn again) and fn's error is returned;
//   - duplicate after success: the stored result, byte for byte; fn does
//     not run;
//   - duplicate while the first runs: an error matching
//     idempotency.ErrInFlight (an *idempotency.InFlightError);
//   - duplicate with a different ValidationPath selection: an error
//     matching idempotency.ErrMismatch;
//   - fn still running at the invocation's margin: a *DeadlineError
//     (ErrDeadline, idempotency.ErrOutcomeUnknown); the key is held, and
//     its retries get an *idempotency.OutcomeUnknownError until an
//     operator resolves the key;
//   - fn reported an unknown outcome itself (idempotency.UnknownOutcome):
//     the same hold, fn's error returned;
//   - the store fails before fn: an error matching
//     idempotency.ErrStoreUnavailable, fn does not run (unless
//     Options.FailOpen);
//   - fn succeeded but its result could not be stored: the result, and
//     no error (the failure is reported to Options.OnEvent as
//     idempotency.OutcomeNotRecorded), since fn did take effect;
//   - the event is not JSON of type In: an error wrapping ErrEvent; a key
//     expression failing on it: ErrExpression; selecting null: ErrNoKey
//     (or, with AllowMissingKey, fn runs unprotected).
//
// Every error of this package's making has the prefix "lambda:"; the
// engine's and fn's errors are wrapped and match with errors.Is/As.
func (h *IdempotentHandler[In, Out]) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var doc any
	if err := decodeJSON(payload, &doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	var in In
	if err := json.Unmarshal(payload, &in); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	key, fp, err := h.sel.keyOf(doc)
	inv := h.cfg.begin(ctx)
	call := func(ctx context.Context) ([]byte, error) {
		out, err := h.fn(ctx, in)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(out)
		if err != nil {
			return nil, fmt.Errorf("lambda: the handler's result is not JSON: %w", err)
		}
		return b, nil
	}
	switch {
	case errors.Is(err, ErrNoKey) && h.allowMissing:
		return run(ctx, &inv, call)
	case err != nil:
		return nil, err
	}
	res, err := inv.engine.Do(ctx, key, fp, func(ctx context.Context) ([]byte, error) {
		return run(ctx, &inv, call)
	})
	if err != nil && res.Value == nil {
		return nil, fmt.Errorf("lambda: %w", err)
	}
	return res.Value, nil
}

// Handle is Invoke for a typed event: in is encoded as JSON (KeyPath and
// ValidationPath see that form) and the result decoded into Out. Its
// errors are Invoke's, plus ErrEvent when in cannot be encoded or the
// stored result no longer decodes into Out.
func (h *IdempotentHandler[In, Out]) Handle(ctx context.Context, in In) (Out, error) {
	var out Out
	payload, err := json.Marshal(in)
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	b, err := h.Invoke(ctx, payload)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("%w: the stored result does not decode: %v", ErrEvent, err)
	}
	return out, nil
}
