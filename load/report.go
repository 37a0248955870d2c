package load

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("load: write json: %w", err)
	}
	return nil
}

func (r *Report) codes() []int {
	var cs []int
	for c := range r.Status {
		cs = append(cs, c)
	}
	sort.Ints(cs)
	return cs
}

func statusName(c int) string {
	if c == 0 {
		return "error"
	}
	return fmt.Sprint(c)
}

// WriteText writes a human-readable summary: totals, the status and
// latency histograms, and the 429 onset.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ramp := ""
	if r.RampTo != "" {
		ramp = " ramping to " + r.RampTo
	}
	fmt.Fprintf(tw, "%s %s at %s%s for %s: %d requests, last answer after %s\n\n", r.Method, r.Target, r.Rate, ramp, r.Duration, r.Requests, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(tw, "STATUS\tCOUNT\tSHARE\n")
	for _, c := range r.codes() {
		fmt.Fprintf(tw, "%s\t%d\t%.1f%%\n", statusName(c), r.Status[c], 100*float64(r.Status[c])/float64(max(r.Requests, 1)))
	}
	fmt.Fprintf(tw, "\nLATENCY\tp50 %s\tp90 %s\tp99 %s\tmax %s\tmean %s\n", rd(r.Latency.P50), rd(r.Latency.P90), rd(r.Latency.P99), rd(r.Latency.Max), rd(r.Latency.Mean))
	fmt.Fprintf(tw, "\nBELOW\tCOUNT\t\n")
	for _, b := range r.Histogram {
		name := "rest"
		if b.Below > 0 {
			name = "<" + b.Below.String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", name, b.Count, strings.Repeat("#", int(math.Ceil(40*float64(b.Count)/float64(max(r.Requests, 1))))))
	}
	for k, n := range r.Errors {
		fmt.Fprintf(tw, "error\t%d\t%s\n", n, k)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("load: write text: %w", err)
	}
	if _, err := io.WriteString(w, "\n"+r.onsetText()+"\n"); err != nil {
		return fmt.Errorf("load: write text: %w", err)
	}
	return nil
}

func rd(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }

func (r *Report) onsetText() string {
	o := r.Onset
	var b strings.Builder
	switch {
	case o == nil:
		b.WriteString("429s: none")
	case o.At < 0:
		b.WriteString("429s: none")
	default:
		fmt.Fprintf(&b, "429s: first sent at %s, offered %.0f/s, after %d admitted", o.At.Round(time.Millisecond), o.Offered, o.AdmittedBefore)
	}
	if o != nil && o.Predicted != nil {
		if *o.Predicted < 0 {
			fmt.Fprintf(&b, "; the declared limit (%s) refuses none of these requests", r.Limit)
		} else {
			fmt.Fprintf(&b, "; the declared limit (%s) predicts the first at %s", r.Limit, o.Predicted.Round(time.Millisecond))
		}
		if o.Agreement != nil {
			fmt.Fprintf(&b, "; %.1f%% of answers agree with it", 100**o.Agreement)
		}
	}
	return b.String()
}

// Plot geometry.
const (
	plotW, plotH     = 900, 240
	padL, padR, padT = 60, 20, 20
	padB             = 36
)

type series struct {
	Name, Color string
	Points      string
}

type bar struct {
	X, Y, W, H float64
	Color      string
	Title      string
}

type tick struct {
	Pos   float64
	Label string
}

type chart struct {
	Title     string
	W, H      int
	X0, X1    float64 // plot area left and right
	Y0, Y1    float64 // plot area top and bottom
	Bars      []bar
	Lines     []series
	Dashed    []series
	XTicks    []tick
	YTicks    []tick
	YLabel    string
	Legend    []series
	LegendTop float64
}

func statusColor(c int) string {
	switch {
	case c == 0:
		return "#888888"
	case c == 429:
		return "#f28e2b"
	case c >= 200 && c < 300:
		return "#59a14f"
	case c >= 500:
		return "#e15759"
	}
	return "#b07aa1"
}

func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

func (r *Report) frame(title, ylabel string, ymax float64, yfmt func(float64) string) chart {
	c := chart{Title: title, W: plotW, H: plotH, X0: padL, X1: plotW - padR, Y0: padT, Y1: plotH - padB, YLabel: ylabel}
	n := max(len(r.Bins), 1)
	total := float64(n) * r.BinWidth.Seconds()
	step := niceMax(total / 10)
	for s := 0.0; s <= total+1e-9; s += step {
		c.XTicks = append(c.XTicks, tick{Pos: c.x(s/r.BinWidth.Seconds(), n), Label: strings.TrimSuffix(fmt.Sprintf("%.2f", s), ".00") + "s"})
	}
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		c.YTicks = append(c.YTicks, tick{Pos: c.y(v, ymax), Label: yfmt(v)})
	}
	return c
}

func (c *chart) x(sec float64, n int) float64 { return c.X0 + (c.X1-c.X0)*sec/float64(n) }
func (c *chart) y(v, ymax float64) float64    { return c.Y1 - (c.Y1-c.Y0)*v/ymax }

func (r *Report) charts() []chart {
	n := max(len(r.Bins), 1)
	per := r.BinWidth.Seconds()
	// Throughput: stacked bars by status, the offered rate, the limit.
	top := 0.0
	for _, s := range r.Bins {
		top = math.Max(top, math.Max(float64(s.Sent)/per, s.Offered))
	}
	top = math.Max(top, r.LimitRate)
	ymax := niceMax(top * 1.05)
	tc := r.frame("Requests per second by send time, coloured by answer (bars); offered rate (line); declared limit (dashed)", "req/s", ymax, func(v float64) string { return fmt.Sprintf("%.0f", v) })
	codes := r.codes()
	bw := (tc.X1 - tc.X0) / float64(n)
	var offered []string
	for i, s := range r.Bins {
		y := tc.Y1
		for _, code := range codes {
			k := s.Status[code]
			if k == 0 {
				continue
			}
			h := (tc.Y1 - tc.Y0) * float64(k) / per / ymax
			y -= h
			tc.Bars = append(tc.Bars, bar{X: tc.x(float64(i), n) + 1, Y: y, W: math.Max(bw-2, 1), H: h, Color: statusColor(code),
				Title: fmt.Sprintf("%s: %d × %s", s.At, k, statusName(code))})
		}
		offered = append(offered, fmt.Sprintf("%.1f,%.1f", tc.x(float64(i)+0.5, n), tc.y(s.Offered, ymax)))
	}
	tc.Lines = append(tc.Lines, series{Name: "offered", Color: "#4e79a7", Points: strings.Join(offered, " ")})
	for _, code := range codes {
		tc.Legend = append(tc.Legend, series{Name: statusName(code), Color: statusColor(code)})
	}
	tc.Legend = append(tc.Legend, series{Name: "offered rate", Color: "#4e79a7"})
	if r.LimitRate > 0 {
		y := tc.y(r.LimitRate, ymax)
		tc.Dashed = append(tc.Dashed, series{Name: "declared limit", Color: "#222222", Points: fmt.Sprintf("%.1f,%.1f %.1f,%.1f", tc.X0, y, tc.X1, y)})
		tc.Legend = append(tc.Legend, series{Name: "declared limit", Color: "#222222"})
	}

	// Latency: p50 and p99 per second.
	lmax := 0.0
	for _, s := range r.Bins {
		lmax = math.Max(lmax, ms(s.P99))
	}
	lmax = niceMax(lmax * 1.05)
	lc := r.frame("Latency p50 and p99 (ms)", "ms", lmax, func(v float64) string { return fmt.Sprintf("%.3g", v) })
	var p50, p99 []string
	for i, s := range r.Bins {
		if s.Sent == 0 {
			continue
		}
		x := lc.x(float64(i)+0.5, n)
		p50 = append(p50, fmt.Sprintf("%.1f,%.1f", x, lc.y(ms(s.P50), lmax)))
		p99 = append(p99, fmt.Sprintf("%.1f,%.1f", x, lc.y(ms(s.P99), lmax)))
	}
	lc.Lines = []series{{Name: "p50", Color: "#4e79a7", Points: strings.Join(p50, " ")}, {Name: "p99", Color: "#e15759", Points: strings.Join(p99, " ")}}
	lc.Legend = lc.Lines
	return []chart{tc, lc}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>levee load: {{.R.Method}} {{.R.Target}}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:24px 0 6px}
.sub{color:#555;margin-bottom:12px} table{border-collapse:collapse;margin:6px 0}
td,th{padding:2px 12px 2px 0;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
svg{display:block;background:#fff;border:1px solid #ddd;margin:6px 0} .onset{background:#fff6e8;padding:8px;border-left:3px solid #f28e2b}
</style></head><body>
<h1>levee load — {{.R.Method}} {{.R.Target}}</h1>
<div class="sub">{{.R.Rate}}{{if .R.RampTo}} ramping to {{.R.RampTo}}{{end}} for {{.R.Duration}}, started {{.Started}} · {{.R.Requests}} requests · latency p50 {{.P50}}, p99 {{.P99}}, max {{.Max}}</div>
<div class="onset">{{.Onset}}</div>
{{range .Charts}}
<h2>{{.Title}}</h2>
<svg width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" xmlns="http://www.w3.org/2000/svg" font-size="11">
{{$c := .}}{{range .YTicks}}<line x1="{{$c.X0}}" x2="{{$c.X1}}" y1="{{.Pos}}" y2="{{.Pos}}" stroke="#eee"/><text x="{{$c.X0}}" dx="-6" y="{{.Pos}}" dy="4" text-anchor="end" fill="#555">{{.Label}}</text>
{{end}}{{range .XTicks}}<line x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.Y1}}" y2="{{$c.Y1}}" stroke="#999"/><text x="{{.Pos}}" y="{{$c.Y1}}" dy="16" text-anchor="middle" fill="#555">{{.Label}}</text>
{{end}}<line x1="{{.X0}}" x2="{{.X1}}" y1="{{.Y1}}" y2="{{.Y1}}" stroke="#999"/><line x1="{{.X0}}" x2="{{.X0}}" y1="{{.Y0}}" y2="{{.Y1}}" stroke="#999"/>
<text transform="rotate(-90)" x="-{{.Y0}}" y="14" text-anchor="end" fill="#555">{{.YLabel}}</text>
{{range .Bars}}<rect x="{{printf "%.1f" .X}}" y="{{printf "%.1f" .Y}}" width="{{printf "%.1f" .W}}" height="{{printf "%.1f" .H}}" fill="{{.Color}}"><title>{{.Title}}</title></rect>
{{end}}{{range .Lines}}<polyline points="{{.Points}}" fill="none" stroke="{{.Color}}" stroke-width="2"/>
{{end}}{{range .Dashed}}<polyline points="{{.Points}}" fill="none" stroke="{{.Color}}" stroke-width="1.5" stroke-dasharray="6 4"/>
{{end}}{{range $i, $l := .Legend}}<rect x="{{$c.X0}}" y="0" width="10" height="10" fill="{{.Color}}" transform="translate({{printf "%d" (index $.LegendX $i)}},4)"/><text x="{{$c.X0}}" y="13" transform="translate({{printf "%d" (index $.LegendX $i)}},0)" dx="14">{{.Name}}</text>
{{end}}</svg>
{{end}}
<h2>Status</h2>
<table><tr><th>status</th><th>count</th><th>share</th></tr>
{{range .Status}}<tr><td><span style="color:{{.Color}}">■</span> {{.Name}}</td><td class="n">{{.Count}}</td><td class="n">{{.Share}}</td></tr>{{end}}</table>
<h2>Latency histogram</h2>
<table><tr><th>latency</th><th>count</th><th></th></tr>
{{range .Hist}}<tr><td>{{.Name}}</td><td class="n">{{.Count}}</td><td><div style="background:#4e79a7;height:10px;width:{{.Width}}px"></div></td></tr>{{end}}</table>
</body></html>
`))

type statusRow struct {
	Name, Color, Share string
	Count              int
}

type histRow struct {
	Name  string
	Count int
	Width int
}

// WriteHTML writes a self-contained HTML page (inline SVG, no scripts,
// nothing fetched) plotting requests per second by status against the
// offered rate and the declared limit, and p50/p99 latency over time, with the status and
// latency histograms and the 429 onset.
func (r *Report) WriteHTML(w io.Writer) error {
	var rows []statusRow
	for _, c := range r.codes() {
		rows = append(rows, statusRow{Name: statusName(c), Color: statusColor(c), Count: r.Status[c],
			Share: fmt.Sprintf("%.1f%%", 100*float64(r.Status[c])/float64(max(r.Requests, 1)))})
	}
	var hist []histRow
	for _, b := range r.Histogram {
		name := "≥ " + defaultBuckets[len(defaultBuckets)-2].String()
		if b.Below > 0 {
			name = "< " + b.Below.String()
		}
		hist = append(hist, histRow{Name: name, Count: b.Count, Width: int(400 * float64(b.Count) / float64(max(r.Requests, 1)))})
	}
	// Legend entries 110px apart.
	legendX := make([]int, 16)
	for i := range legendX {
		legendX[i] = 110 * i
	}
	data := struct {
		R                      *Report
		Started, P50, P99, Max string
		Onset                  string
		Charts                 []chart
		Status                 []statusRow
		Hist                   []histRow
		LegendX                []int
	}{R: r, Started: r.Started.UTC().Format(time.RFC3339), P50: rd(r.Latency.P50), P99: rd(r.Latency.P99), Max: rd(r.Latency.Max),
		Onset: r.onsetText(), Charts: r.charts(), Status: rows, Hist: hist, LegendX: legendX}
	if err := page.Execute(w, data); err != nil {
		return fmt.Errorf("load: write html: %w", err)
	}
	return nil
}
