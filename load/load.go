// Package load sends paced HTTP load, constant or ramping, and reports
// what came back: status and latency histograms, per-second series, the
// onset of 429s compared with what a declared limit predicts, and an
// HTML plot of throughput, status and latency over time. The pacing and
// the HTTP work are vegeta's (github.com/tsenart/vegeta/v12) used as a
// library; this package adds the limit-aware analysis and the reports.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/ratelimit"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// ErrOptions is wrapped by the errors Run and ParseRate return for
// unusable input; nothing has been sent then.
var ErrOptions = errors.New("load: invalid options")

// Rate is a request rate: Freq requests per Per.
type Rate struct {
	// Freq is the number of requests per Per.
	Freq int
	// Per is the period Freq is counted over.
	Per time.Duration
}

// PerSecond returns the rate in requests per second.
func (r Rate) PerSecond() float64 {
	if r.Per <= 0 {
		return 0
	}
	return float64(r.Freq) / r.Per.Seconds()
}

// String formats the rate as ParseRate reads it.
func (r Rate) String() string {
	switch r.Per {
	case time.Second:
		return strconv.Itoa(r.Freq) + "/s"
	case time.Minute:
		return strconv.Itoa(r.Freq) + "/m"
	}
	return strconv.Itoa(r.Freq) + "/" + r.Per.String()
}

// ParseRate parses "500/s", "30/m", "1000/1h" or "50/500ms" (a count, a
// slash and a unit or a duration; "500" alone means per second). The
// error wraps ErrOptions.
func ParseRate(s string) (Rate, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		per = "s"
	}
	f, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || f <= 0 || f > 1_000_000 {
		return Rate{}, fmt.Errorf("%w: rate %q: want a count from 1 to 1000000, e.g. 500/s", ErrOptions, s)
	}
	per = strings.TrimSpace(per)
	var d time.Duration
	switch per {
	case "s", "sec", "second":
		d = time.Second
	case "m", "min", "minute":
		d = time.Minute
	case "h", "hour":
		d = time.Hour
	default:
		d, err = time.ParseDuration(per)
		if err != nil || d <= 0 {
			return Rate{}, fmt.Errorf("%w: rate %q: want a unit (s, m, h) or a duration after the slash", ErrOptions, s)
		}
	}
	return Rate{Freq: f, Per: d}, nil
}

// Options configures Run. Zero fields take the defaults their docs state.
type Options struct {
	// URL is the target (required).
	URL string
	// Method is the request method; default GET.
	Method string
	// Body is sent with every request (nil: none).
	Body []byte
	// Header is sent with every request.
	Header http.Header
	// Rate is the request rate (required); with RampTo it is the rate at
	// the start.
	Rate Rate
	// RampTo, when non-zero, ramps the rate linearly from Rate to RampTo
	// over Duration.
	RampTo Rate
	// Duration is how long load is sent (required, at most 1h).
	Duration time.Duration
	// Limit is the declared rate limit of the target, if any: the report
	// then compares the 429s with what the limit predicts for the sent
	// requests (assuming they all share one idle bucket at the start).
	Limit *ratelimit.Policy
	// Timeout bounds each request; default 10s.
	Timeout time.Duration
	// MaxWorkers bounds the concurrent requests; default 1000.
	MaxWorkers uint64
	// Progress, when set, receives a progress line every second
	// (carriage-return separated) and a final newline.
	Progress io.Writer
	// Client sends the requests; default vegeta's client (keep-alive,
	// no redirects followed).
	Client *http.Client
}

// Report is what a run observed.
type Report struct {
	// Target, Method, Rate, RampTo and Duration repeat the options;
	// Started is when the first request was sent.
	Target   string        `json:"target"`
	Method   string        `json:"method"`
	Rate     string        `json:"rate"`
	RampTo   string        `json:"ramp_to,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Started  time.Time     `json:"started"`
	// Requests is the number sent; Elapsed the time until the last
	// answer.
	Requests int           `json:"requests"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// Status counts answers by status; 0 counts transport errors.
	Status map[int]int `json:"status"`
	// Errors counts transport errors by message (at most 20 kinds).
	Errors map[string]int `json:"errors,omitempty"`
	// Latency percentiles over all answers.
	Latency Percentiles `json:"latency"`
	// Histogram counts latencies in buckets (the last is unbounded).
	Histogram []Bucket `json:"histogram"`
	// Bins is the run over time, in bins of BinWidth by send time
	// (1s for runs over a minute, finer for shorter ones).
	BinWidth time.Duration `json:"bin_width_ns"`
	Bins     []Bin         `json:"bins"`
	// Limit is the declared limit, described; LimitRate its sustained
	// rate in requests per second.
	Limit     string  `json:"limit,omitempty"`
	LimitRate float64 `json:"limit_rate,omitempty"`
	// Onset describes the first 429 (nil when none came and none was
	// predicted).
	Onset *Onset `json:"onset,omitempty"`
}

// Percentiles of latency.
type Percentiles struct {
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// Bucket is one latency histogram bucket: answers with latency < Below
// (Below 0: the rest).
type Bucket struct {
	Below time.Duration `json:"below_ns"`
	Count int           `json:"count"`
}

// Bin is one slice of the run.
type Bin struct {
	// At is the bin's start, from the start of the run.
	At time.Duration `json:"at_ns"`
	// Offered is the intended rate in the bin's middle (requests/s).
	Offered float64 `json:"offered"`
	// Sent counts requests sent in the bin, Status their answers.
	Sent   int         `json:"sent"`
	Status map[int]int `json:"status"`
	// P50 and P99 latency of the bin's answers.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
}

// binWidth picks about 20 to 60 bins: 1s from a minute up, else a
// tenth, a quarter or a half second.
func binWidth(d time.Duration) time.Duration {
	for _, w := range []time.Duration{100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond} {
		if d/w <= 60 {
			return w
		}
	}
	return time.Second
}

// Onset compares the first 429 with the declared limit.
type Onset struct {
	// At is when the first 429'd request was sent (-1: none came).
	At time.Duration `json:"at_ns"`
	// Offered is the intended rate then (requests/s).
	Offered float64 `json:"offered"`
	// AdmittedBefore counts the 2xx answers to requests sent before it.
	AdmittedBefore int `json:"admitted_before"`
	// Predicted is when the declared limit first refuses a sent request
	// (-1: never; absent without a declared limit).
	Predicted *time.Duration `json:"predicted_ns,omitempty"`
	// Agreement is the fraction of answered requests whose 429-or-not
	// matches the declared limit's verdict (absent without a limit).
	Agreement *float64 `json:"agreement,omitempty"`
}

func (o *Options) setDefaults() error {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: URL %q is not an absolute http(s) URL", ErrOptions, o.URL)
	}
	if o.Rate.Freq <= 0 || o.Rate.Per <= 0 {
		return fmt.Errorf("%w: a rate is required", ErrOptions)
	}
	if o.Duration <= 0 || o.Duration > time.Hour {
		return fmt.Errorf("%w: duration %s: want more than 0 and at most 1h", ErrOptions, o.Duration)
	}
	if o.Limit != nil {
		p := *o.Limit
		if p.Name == "" {
			p.Name = "declared"
		}
		o.Limit = &p
		if err := p.Validate(); err != nil || o.Limit.Kind != ratelimit.KindRate {
			return fmt.Errorf("%w: limit: want a rate policy (%v)", ErrOptions, err)
		}
	}
	if o.Method == "" {
		o.Method = http.MethodGet
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxWorkers == 0 {
		o.MaxWorkers = 1000
	}
	return nil
}

// pacer returns the vegeta pacer and the intended rate at each offset.
func (o *Options) pacer() (vegeta.Pacer, func(time.Duration) float64) {
	start := vegeta.Rate{Freq: o.Rate.Freq, Per: o.Rate.Per}
	if o.RampTo.Freq == 0 {
		r := o.Rate.PerSecond()
		return start, func(time.Duration) float64 { return r }
	}
	slope := (o.RampTo.PerSecond() - o.Rate.PerSecond()) / o.Duration.Seconds()
	p := vegeta.LinearPacer{StartAt: start, Slope: slope}
	return p, p.Rate
}

// Run sends the load and returns the report. It stops early when ctx
// ends, returning the report of what was sent with ctx's error. Other
// errors wrap ErrOptions (nothing sent).
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	pacer, offered := o.pacer()
	tgt := vegeta.Target{Method: o.Method, URL: o.URL, Body: o.Body, Header: o.Header}
	opts := []func(*vegeta.Attacker){vegeta.Timeout(o.Timeout), vegeta.MaxWorkers(o.MaxWorkers), vegeta.Redirects(vegeta.NoFollow), vegeta.MaxBody(0)}
	if o.Client != nil {
		opts = append(opts, vegeta.Client(o.Client))
	}
	atk := vegeta.NewAttacker(opts...)
	started := time.Now()
	results := atk.Attack(vegeta.NewStaticTargeter(tgt), pacer, o.Duration, "levee-load")
	var all []vegeta.Result
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	done := ctx.Done()
	prog := &progress{w: o.Progress, total: o.Duration}
loop:
	for {
		select {
		case r, ok := <-results:
			if !ok {
				break loop
			}
			all = append(all, *r)
			prog.add(r)
		case <-tick.C:
			prog.print(time.Since(started), offered(time.Since(started)))
		case <-done:
			atk.Stop()
			done = nil // drain the rest
		}
	}
	prog.print(time.Since(started), offered(min(time.Since(started), o.Duration)))
	prog.finish()
	rep := build(o, all, started, offered)
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("load: %w", err)
	}
	return rep, nil
}

// progress prints one line a second.
type progress struct {
	w      io.Writer
	total  time.Duration
	sent   int
	ok     int
	thr    int
	other  int
	errs   int
	recent []time.Duration
}

func (p *progress) add(r *vegeta.Result) {
	p.sent++
	switch {
	case r.Code == 0:
		p.errs++
	case r.Code == http.StatusTooManyRequests:
		p.thr++
	case r.Code >= 200 && r.Code < 300:
		p.ok++
	default:
		p.other++
	}
	p.recent = append(p.recent, r.Latency)
}

func (p *progress) print(el time.Duration, rate float64) {
	if p.w == nil {
		return
	}
	p99 := percentile(p.recent, 0.99)
	p.recent = p.recent[:0]
	done := min(el, p.total)
	n := int(20 * done / max(p.total, 1))
	bar := strings.Repeat("#", n) + strings.Repeat("-", 20-n)
	fmt.Fprintf(p.w, "\r[%s] %5.1fs/%s  sent %d  offered %.0f/s  2xx %d  429 %d  other %d  errors %d  p99 (last 1s) %s   ",
		bar, done.Seconds(), p.total, p.sent, rate, p.ok, p.thr, p.other, p.errs, p99.Round(10*time.Microsecond))
}

func (p *progress) finish() {
	if p.w != nil {
		fmt.Fprintln(p.w)
	}
}

// percentile returns the q-quantile of ds (sorted in place); 0 if empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

var defaultBuckets = []time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 0,
}

func build(o Options, all []vegeta.Result, started time.Time, offered func(time.Duration) float64) *Report {
	sort.Slice(all, func(i, j int) bool { return all[i].Timestamp.Before(all[j].Timestamp) })
	rep := &Report{Target: o.URL, Method: o.Method, Rate: o.Rate.String(), Duration: o.Duration, Started: started,
		Requests: len(all), Status: map[int]int{}}
	if o.RampTo.Freq != 0 {
		rep.RampTo = o.RampTo.String()
	}
	if len(all) > 0 {
		started = all[0].Timestamp
		rep.Started = started
	}
	lat := make([]time.Duration, 0, len(all))
	var sum time.Duration
	for _, b := range defaultBuckets {
		rep.Histogram = append(rep.Histogram, Bucket{Below: b})
	}
	bw := binWidth(o.Duration)
	rep.BinWidth = bw
	nbin := int((o.Duration + bw - 1) / bw)
	binLat := make([][]time.Duration, nbin)
	for i := range nbin {
		at := time.Duration(i) * bw
		rep.Bins = append(rep.Bins, Bin{At: at, Offered: offered(at + bw/2), Status: map[int]int{}})
	}
	for _, r := range all {
		code := int(r.Code)
		rep.Status[code]++
		if code == 0 && r.Error != "" {
			if rep.Errors == nil {
				rep.Errors = map[string]int{}
			}
			if _, ok := rep.Errors[r.Error]; ok || len(rep.Errors) < 20 {
				rep.Errors[r.Error]++
			}
		}
		if end := r.End().Sub(started); end > rep.Elapsed {
			rep.Elapsed = end
		}
		lat = append(lat, r.Latency)
		sum += r.Latency
		for i, b := range rep.Histogram {
			if b.Below == 0 || r.Latency < b.Below {
				rep.Histogram[i].Count++
				break
			}
		}
		b := min(max(int(r.Timestamp.Sub(started)/bw), 0), nbin-1)
		rep.Bins[b].Sent++
		rep.Bins[b].Status[code]++
		binLat[b] = append(binLat[b], r.Latency)
	}
	for i := range rep.Bins {
		rep.Bins[i].P50 = percentile(binLat[i], 0.5)
		rep.Bins[i].P99 = percentile(binLat[i], 0.99)
	}
	if len(lat) > 0 {
		rep.Latency = Percentiles{P50: percentile(lat, 0.5), P90: percentile(lat, 0.9), P99: percentile(lat, 0.99),
			Max: percentile(lat, 1), Mean: sum / time.Duration(len(lat))}
	}
	rep.Onset = onset(o, all, started, offered)
	if o.Limit != nil {
		rep.Limit = describe(*o.Limit)
		rep.LimitRate = float64(o.Limit.Limit) / o.Limit.Period.Seconds()
	}
	return rep
}

func describe(p ratelimit.Policy) string {
	return fmt.Sprintf("%d per %s, burst %d", p.Limit, p.Period, p.EffectiveBurst())
}

// onset finds the first 429 and, with a declared limit, replays the sent
// requests through levee's own GCRA to predict which should be refused.
func onset(o Options, all []vegeta.Result, started time.Time, offered func(time.Duration) float64) *Onset {
	on := &Onset{At: -1}
	for _, r := range all {
		if r.Code == http.StatusTooManyRequests {
			on.At = r.Timestamp.Sub(started)
			on.Offered = offered(on.At)
			break
		}
		if r.Code >= 200 && r.Code < 300 {
			on.AdmittedBefore++
		}
	}
	if o.Limit == nil {
		if on.At < 0 {
			return nil
		}
		return on
	}
	p := *o.Limit
	if p.Name == "" {
		p.Name = "declared"
	}
	lim := ratelimit.NewLocal(ratelimit.LocalOptions{})
	pred := time.Duration(-1)
	agree, answered := 0, 0
	for _, r := range all {
		res := lim.AllowN(r.Timestamp, p, "k", 1)
		if !res.Allowed && pred < 0 {
			pred = r.Timestamp.Sub(started)
		}
		if r.Code == 0 {
			continue
		}
		answered++
		if (r.Code == http.StatusTooManyRequests) == !res.Allowed {
			agree++
		}
	}
	on.Predicted = &pred
	if answered > 0 {
		a := float64(agree) / float64(answered)
		on.Agreement = &a
	}
	return on
}
