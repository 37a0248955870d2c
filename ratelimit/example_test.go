package ratelimit_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

// Two policies on one API: a per-client burst limit and a daily quota per
// API key. Every response carries RateLimit-Policy and RateLimit for the
// tightest policy; the third request in the same instant is refused with
// 429, Retry-After and a problem+json body naming the violated policy.
func ExampleMiddleware() {
	perClient, _ := ratelimit.ParsePolicy("2/s")
	perClient.Name = "per-client"
	daily, _ := ratelimit.ParsePolicy("5000/day")
	daily.Name = "daily"

	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	mw, err := ratelimit.Middleware(ratelimit.Options{
		Rules: []ratelimit.Rule{
			{Policy: perClient, Key: ratelimit.ClientIP(nil)},
			{Policy: daily, Key: ratelimit.Header("X-Api-Key")},
		},
		Now: func() time.Time { return now }, // a fixed clock for the example
	})
	if err != nil {
		panic(err)
	}
	api := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))

	for range 3 {
		r := httptest.NewRequest(http.MethodGet, "/orders", nil)
		r.Header.Set("X-Api-Key", "key-1")
		w := httptest.NewRecorder()
		api.ServeHTTP(w, r)
		fmt.Printf("%d RateLimit-Policy: %s RateLimit: %s Retry-After: %q\n",
			w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"), w.Header().Get("Retry-After"))
		if w.Code != http.StatusOK {
			var doc struct {
				Type     string   `json:"type"`
				Detail   string   `json:"detail"`
				Violated []string `json:"violated-policies"`
			}
			_ = json.Unmarshal(w.Body.Bytes(), &doc)
			fmt.Println(doc.Type)
			fmt.Println(doc.Detail, doc.Violated)
		}
	}
	// Output:
	// 200 RateLimit-Policy: "per-client";q=2;w=1 RateLimit: "per-client";r=1;t=1 Retry-After: ""
	// 200 RateLimit-Policy: "per-client";q=2;w=1 RateLimit: "per-client";r=0;t=1 Retry-After: ""
	// 429 RateLimit-Policy: "per-client";q=2;w=1 RateLimit: "per-client";r=0;t=1 Retry-After: "1"
	// https://github.com/leveehq/levee/blob/main/docs/problems.md#rate-limited
	// rate limit exceeded for policy "per-client"; retry after 1 s [per-client]
}

func ExampleParsePolicy() {
	for _, s := range []string{"100/s burst 200", "1000/hour", "concurrency 50", "10000/month", "100/fortnight"} {
		p, err := ratelimit.ParsePolicy(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%-16s kind=%s limit=%d period=%v burst=%d interval=%v\n", p, p.Kind, p.Limit, p.Period, p.EffectiveBurst(), p.Interval())
	}
	// Output:
	// 100/s burst 200  kind=rate limit=100 period=1s burst=200 interval=10ms
	// 1000/h           kind=rate limit=1000 period=1h0m0s burst=1000 interval=3.6s
	// concurrency 50   kind=concurrency limit=50 period=0s burst=0 interval=0s
	// 10000/month      kind=calendar limit=10000 period=0s burst=10000 interval=0s
	// ratelimit: policy "100/fortnight": unknown time unit "fortnight" (want s, m, h or d)
}

// AllowN is the allocation-free single-policy call, with time passed in.
func ExampleLocal_AllowN() {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p, _ := ratelimit.ParsePolicy("2/s")
	p.Name = "per-client"
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		r := l.AllowN(now, p, "client-1", 1)
		fmt.Printf("request %d: allowed=%v remaining=%d retry_after=%v\n", i+1, r.Allowed, r.Remaining, r.RetryAfter)
	}
	r := l.AllowN(now.Add(500*time.Millisecond), p, "client-1", 1)
	fmt.Printf("500ms later: allowed=%v\n", r.Allowed)
	// Output:
	// request 1: allowed=true remaining=1 retry_after=0s
	// request 2: allowed=true remaining=0 retry_after=0s
	// request 3: allowed=false remaining=0 retry_after=500ms
	// 500ms later: allowed=true
}

// A calendar quota resets at the calendar boundary in its time zone: here
// midnight on 1 April in Paris, an hour after the last unit of March is
// spent (March 2030 is 31 days minus the hour DST takes away). t and the
// denied demand's RetryAfter point at the boundary.
func ExampleParsePolicy_calendar() {
	p, _ := ratelimit.ParsePolicy("10000/month")
	p.Name = "monthly"
	p.Location, _ = time.LoadLocation("Europe/Paris")
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	now := time.Date(2030, 3, 31, 23, 0, 0, 0, p.Location)

	r := l.AllowN(now, p, "tenant-1", 10000)
	h := http.Header{}
	ratelimit.SetHeaders(h, p, r)
	fmt.Println(r.Allowed, h.Get("RateLimit-Policy"), h.Get("RateLimit"))
	r = l.AllowN(now, p, "tenant-1", 1)
	fmt.Println(r.Allowed, r.RetryAfter)
	r = l.AllowN(now.Add(time.Hour), p, "tenant-1", 1)
	fmt.Println(r.Allowed, r.Remaining)
	// Output:
	// true "monthly";q=10000;w=2674800 "monthly";r=0;t=3600
	// false 1h0m0s
	// true 9999
}
