package idempotency

import (
	"net/http"
	"time"
)

// The defaults of Options and HTTPOptions, exported so that configuration
// layers (levee's gateway YAML) show and document the same values.
const (
	DefaultLease          = 30 * time.Second
	DefaultRetention      = 24 * time.Hour
	DefaultPollInterval   = 50 * time.Millisecond
	DefaultRetryAfter     = time.Second
	DefaultStoreTimeout   = 5 * time.Second
	DefaultHeader         = "Idempotency-Key"
	DefaultMaxRequestBody = 1 << 20
	DefaultMaxStoredBody  = 1 << 20
)

// DefaultMethods are the methods the middleware covers by default.
func DefaultMethods() []string { return []string{http.MethodPost, http.MethodPatch} }
