package verify_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/verify"
)

// An API that never throttles fails the rate-limit check against the
// limit it declares.
func ExampleRateLimit() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	defer api.Close()
	limit, _ := ratelimit.ParsePolicy("10/s burst 5")
	rep, err := verify.RateLimit(context.Background(), verify.RateLimitOptions{URL: api.URL, Limit: limit})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range rep.Results {
		fmt.Println(r.Case, r.Verdict)
	}
	fmt.Println("failed:", rep.Failed())
	// Output:
	// burst-exact fail
	// throttle-status-429 skip
	// retry-after-present skip
	// retry-after-honest skip
	// problem-json skip
	// ratelimit-fields skip
	// failed: true
}

func ExampleJSONPath_Lookup() {
	p, _ := verify.ParseJSONPath("$.data.items[0]['id']")
	v, _ := p.Lookup([]byte(`{"data":{"items":[{"id":"ch_1"}]}}`))
	fmt.Println(v)
	// Output: "ch_1"
}
