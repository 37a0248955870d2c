package lambda

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jmespath-community/go-jmespath"

	"github.com/leveehq/levee/idempotency"
)

// ErrNoKey means the key expression selected nothing (null) from the
// event: the handler did not run (unless the handler allows a missing
// key, in which case it ran unprotected).
var ErrNoKey = errors.New("lambda: the idempotency key expression selected nothing from the event")

// ErrExpression is wrapped by the constructors for a JMESPath expression
// that does not compile, and by the handlers when an expression fails on
// an event (a function given an argument of the wrong type).
var ErrExpression = errors.New("lambda: JMESPath expression")

// ErrEvent is wrapped when an event or a record is not the JSON the
// handler needs (a body that is not JSON under a key expression).
var ErrEvent = errors.New("lambda: malformed event")

// jsonFunction is powertools_json(string): it parses a string holding a
// JSON document (an API Gateway or SQS body) so that an expression can
// reach into it, as Powertools' function of the same name does.
var jsonFunction = jmespath.FunctionEntry{
	Name:      "powertools_json",
	Arguments: []jmespath.ArgSpec{{Types: []jmespath.JpType{jmespath.JpString}}},
	Handler: func(args []any) (any, error) {
		var v any
		if err := decodeJSON([]byte(args[0].(string)), &v); err != nil {
			return nil, fmt.Errorf("powertools_json: %w", err)
		}
		return v, nil
	},
}

// expr is a compiled JMESPath expression ("" compiles to nil: none).
type expr struct {
	src string
	jp  jmespath.JMESPath
}

func compile(field, src string) (*expr, error) {
	if src == "" {
		return nil, nil
	}
	jp, err := jmespath.Compile(src, jsonFunction)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %q: %v", ErrExpression, field, src, err)
	}
	return &expr{src: src, jp: jp}, nil
}

// search evaluates e over doc and returns the canonical JSON of what it
// selects, or nil when it selects null.
func (e *expr) search(doc any) ([]byte, error) {
	v, err := e.jp.Search(doc)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrExpression, e.src, err)
	}
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w %q: result not JSON: %v", ErrExpression, e.src, err)
	}
	return idempotency.CanonicalJSON(b)
}

// decodeJSON decodes one JSON document, numbers kept exact (json.Number),
// so that a key like 12345678901234567890 selects what was sent.
func decodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON document")
	}
	return nil
}

// selector is the key and fingerprint rule of a handler: Key selects the
// idempotency key from a document, Validation (optional) the part that
// must match on a duplicate.
type selector struct {
	scope      string
	key        *expr
	validation *expr
}

func newSelector(scope, keyPath, validationPath string) (selector, error) {
	k, err := compile("KeyPath", keyPath)
	if err != nil {
		return selector{}, err
	}
	v, err := compile("ValidationPath", validationPath)
	if err != nil {
		return selector{}, err
	}
	return selector{scope: scope, key: k, validation: v}, nil
}

// keyOf returns the scoped store key and the fingerprint of doc: the key
// is what s.key selects (ErrNoKey when null); the fingerprint covers the
// selected key and, with a validation path, what it selects.
func (s *selector) keyOf(doc any) (string, idempotency.Fingerprint, error) {
	k, err := s.key.search(doc)
	if err != nil {
		return "", idempotency.Fingerprint{}, err
	}
	if k == nil {
		return "", idempotency.Fingerprint{}, fmt.Errorf("%w (KeyPath %q)", ErrNoKey, s.key.src)
	}
	var v []byte
	if s.validation != nil {
		if v, err = s.validation.search(doc); err != nil {
			return "", idempotency.Fingerprint{}, err
		}
	}
	return idempotency.ScopedKey(s.scope, "", string(k)), fingerprint(k, v), nil
}

// fingerprint hashes the selected key and validation values, each
// length-prefixed so that no two pairs hash alike.
func fingerprint(parts ...[]byte) idempotency.Fingerprint {
	var b []byte
	for _, p := range parts {
		b = fmt.Appendf(b, "%d:", len(p))
		b = append(b, p...)
	}
	return idempotency.FingerprintOf(b)
}
