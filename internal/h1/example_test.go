package h1_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/leveehq/levee/internal/h1"
)

func ExampleOutcomeUnknown() {
	notSent := errors.New("dial tcp: connection refused")
	sent := h1.Unknown(fmt.Errorf("read: %w", context.DeadlineExceeded))
	fmt.Println(h1.OutcomeUnknown(notSent), h1.OutcomeUnknown(sent), errors.Is(sent, context.DeadlineExceeded))
	// Output: false true true
}
