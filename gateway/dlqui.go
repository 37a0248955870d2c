package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/queue"
)

// The DLQ web page on the admin listener, for people who would rather
// look than read: /dlq/ui lists dead messages (filter by queue, reason,
// target), /dlq/ui/{queue}/{id} shows one with its attempt history, and
// both can replay and purge. It is server-rendered HTML with no script.
// Sign-in is a form asking for admin.token; the session cookie holds an
// HMAC of the token (never the token), HttpOnly, SameSite=Strict, so a
// token rotation on reload ends every session. Form posts are also
// checked by http.CrossOriginProtection. Like the API, the page is off
// (404) while no admin.token is configured.

const uiCookie, uiOperatorCookie = "levee_dlq_session", "levee_dlq_operator"

func uiSession(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("levee dlq ui session v1"))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) adminToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Admin.Token
}

// uiAuthed reports whether r carries the admin token (header) or a
// session cookie made from it.
func (s *Server) uiAuthed(r *http.Request, token string) bool {
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tokenEqual(got, token) {
		return true
	}
	c, err := r.Cookie(uiCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(uiSession(token))) == 1
}

func (s *Server) registerDLQPage(mux *http.ServeMux) {
	cop := http.NewCrossOriginProtection()
	mux.HandleFunc("GET /dlq/ui", s.uiPage(s.uiList))
	mux.HandleFunc("GET /dlq/ui/{queue}/{id}", s.uiPage(s.uiShow))
	mux.Handle("POST /dlq/ui/login", cop.Handler(http.HandlerFunc(s.uiLogin)))
	mux.Handle("POST /dlq/ui/{queue}/{op}", cop.Handler(http.HandlerFunc(s.uiPage(s.uiAction))))
}

// uiPage gates a page: 404 without a token configured, the sign-in form
// without a session.
func (s *Server) uiPage(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := s.adminToken()
		if token == "" {
			http.Error(w, "the DLQ page is off: set admin.token", http.StatusNotFound)
			return
		}
		if !s.uiAuthed(r, token) {
			w.WriteHeader(http.StatusUnauthorized)
			s.render(w, "login", map[string]any{"Error": r.URL.Query().Get("error")})
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		h(w, r)
	}
}

func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request) {
	token := s.adminToken()
	if token == "" {
		http.Error(w, "the DLQ page is off: set admin.token", http.StatusNotFound)
		return
	}
	if !tokenEqual(r.PostFormValue("token"), token) {
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "admin request refused", slog.String("path", r.URL.Path), slog.String("remote", r.RemoteAddr), slog.Bool("token_sent", true))
		http.Redirect(w, r, "/dlq/ui?error=wrong+token", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: uiSession(token), Path: "/dlq/ui", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 8 * 3600})
	op := r.PostFormValue("operator")
	if len(op) > 100 {
		op = op[:100]
	}
	http.SetCookie(w, &http.Cookie{Name: uiOperatorCookie, Value: url.QueryEscape(op), Path: "/dlq/ui", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 8 * 3600})
	http.Redirect(w, r, "/dlq/ui", http.StatusSeeOther)
}

type uiRow struct {
	DLQMessage
	Age string
}

func (s *Server) uiList(w http.ResponseWriter, r *http.Request) {
	f, err := dlqFilter(r)
	data := map[string]any{"Queues": s.queues.Names(), "Queue": r.URL.Query().Get("queue"), "Reason": string(f.Reason),
		"Target": f.Target, "Done": r.URL.Query().Get("done"), "Error": r.URL.Query().Get("error")}
	if err != nil {
		data["Error"] = err.Error()
		s.render(w, "list", data)
		return
	}
	names := s.queues.Names()
	if qn := r.URL.Query().Get("queue"); qn != "" {
		if s.queues.Queue(qn) == nil {
			data["Error"] = "no queue named " + strconv.Quote(qn)
			s.render(w, "list", data)
			return
		}
		names = []string{qn}
	}
	if f.Limit == 0 {
		f.Limit = 200
	}
	var rows []uiRow
	for _, name := range names {
		page, err := s.queues.Queue(name).List(r.Context(), f)
		if err != nil {
			data["Error"] = "queue store: " + err.Error()
			break
		}
		for i := range page.Messages {
			m := toDLQ(&page.Messages[i], false)
			rows = append(rows, uiRow{DLQMessage: m, Age: time.Since(m.DeadAt).Truncate(time.Second).String()})
		}
	}
	data["Rows"] = rows
	s.render(w, "list", data)
}

func (s *Server) uiShow(w http.ResponseWriter, r *http.Request) {
	q := s.queues.Queue(r.PathValue("queue"))
	if q == nil {
		http.Error(w, "no such queue", http.StatusNotFound)
		return
	}
	m, err := q.Get(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, queue.ErrNotFound):
		w.WriteHeader(http.StatusNotFound)
		s.render(w, "list", map[string]any{"Queues": s.queues.Names(), "Error": "message " + r.PathValue("id") + " is not in the DLQ (never dead, replayed or purged)"})
	case err != nil:
		http.Error(w, "queue store: "+err.Error(), http.StatusServiceUnavailable)
	default:
		s.render(w, "show", toDLQ(m, true))
	}
}

// uiAction runs replay or purge from a form: id (one message), or the
// list's filters (reason, target) with all=true.
func (s *Server) uiAction(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("op")
	q := s.queues.Queue(r.PathValue("queue"))
	if q == nil || (op != "replay" && op != "purge") {
		http.Error(w, "no such queue or operation", http.StatusNotFound)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	f := queue.DeadFilter{IDs: r.PostForm["id"], Target: r.PostFormValue("target"), Reason: queue.Reason(r.PostFormValue("reason"))}
	if len(f.IDs) == 0 && f.Target == "" && f.Reason == "" && r.PostFormValue("all") != "true" {
		http.Redirect(w, r, "/dlq/ui?error=choose+messages", http.StatusSeeOther)
		return
	}
	if c, err := r.Cookie(uiOperatorCookie); err == nil {
		if op, err := url.QueryUnescape(c.Value); err == nil {
			r.Header.Set("X-Levee-Operator", op+" (web)")
		}
	}
	res, err := s.dlqOp(r, q, op, f)
	v := url.Values{"queue": {q.Name()}}
	if errors.Is(err, queue.ErrReplayRunning) {
		v.Set("error", "a replay of this queue is already running")
	} else if err != nil {
		v.Set("error", err.Error())
	}
	verb := map[string]string{"replay": "replayed", "purge": "purged"}[op]
	v.Set("done", verb+" "+strconv.Itoa(res.Messages)+" message(s)")
	http.Redirect(w, r, "/dlq/ui?"+v.Encode(), http.StatusSeeOther)
}

func (s *Server) render(w http.ResponseWriter, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if err := uiTemplates.ExecuteTemplate(w, name, data); err != nil {
		s.log.Error("dlq page", "error", err)
	}
}

var uiTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"ts": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") },
	"s":  func(b []byte) string { return string(b) },
	// seg escapes a path segment: ids and queue names may hold '/', '?',
	// '#' or '%' (a webhook message's id carries its route's name).
	"seg": url.PathEscape,
}).Parse(`
{{define "head"}}<!doctype html><html lang="en"><head><meta charset="utf-8"><title>levee — dead-letter queue</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:10px 20px;font-weight:600}
main{padding:16px 20px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eaeef2}
.done{background:#dafbe1;border:1px solid #4ac26b;padding:6px 10px;margin-bottom:10px}
.error{background:#ffebe9;border:1px solid #ff8182;padding:6px 10px;margin-bottom:10px}
form.inline{display:inline}
button{cursor:pointer}
button.danger{color:#cf222e}
pre{background:#fff;border:1px solid #d0d7de;padding:8px;white-space:pre-wrap;word-break:break-all}
code{font-size:12px}
</style></head><body><header>levee · dead-letter queue</header><main>{{end}}
{{define "foot"}}</main></body></html>{{end}}

{{define "login"}}{{template "head"}}
<h1>Sign in</h1>
{{with .Error}}<div class="error">{{.}}</div>{{end}}
<form method="post" action="/dlq/ui/login">
<p><label>Admin token <input type="password" name="token" id="token" autocomplete="off" required></label></p>
<p><label>Your name (logged with every replay and purge) <input name="operator" id="operator"></label></p>
<p><button type="submit" id="signin">Sign in</button></p>
</form>{{template "foot"}}{{end}}

{{define "list"}}{{template "head"}}
<h1>Dead messages</h1>
{{with .Done}}<div class="done" id="done">{{.}}</div>{{end}}
{{with .Error}}<div class="error" id="error">{{.}}</div>{{end}}
<form method="get" action="/dlq/ui">
<label>Queue <select name="queue"><option value="">all</option>{{range .Queues}}<option{{if eq . $.Queue}} selected{{end}}>{{.}}</option>{{end}}</select></label>
<label>Reason <select name="reason"><option value="">any</option>
<option{{if eq .Reason "max_attempts"}} selected{{end}}>max_attempts</option>
<option{{if eq .Reason "permanent"}} selected{{end}}>permanent</option>
<option{{if eq .Reason "target_gone"}} selected{{end}}>target_gone</option></select></label>
<label>Target <input name="target" value="{{.Target}}" size="40"></label>
<button type="submit">Filter</button></form>
<p></p>
<table id="messages"><tr><th>Queue</th><th>Message</th><th>Reason</th><th>Attempts</th><th>Dead for</th><th>Target</th><th>Last error</th><th></th></tr>
{{range .Rows}}<tr>
<td>{{.Queue}}</td><td><a href="/dlq/ui/{{seg .Queue}}/{{seg .ID}}"><code>{{.ID}}</code></a></td><td>{{.Reason}}</td><td>{{.Attempts}}</td><td>{{.Age}}</td>
<td><code>{{.Target}}</code></td><td>{{.LastError}}</td>
<td><form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/replay"><input type="hidden" name="id" value="{{.ID}}"><button type="submit" class="replay">Replay</button></form>
<form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/purge"><input type="hidden" name="id" value="{{.ID}}"><button type="submit" class="danger">Purge</button></form></td>
</tr>{{else}}<tr><td colspan="8">No dead messages{{if .Queue}} in {{.Queue}}{{end}}.</td></tr>{{end}}
</table>
{{if and .Queue .Rows}}<p>
<form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/replay"><input type="hidden" name="reason" value="{{.Reason}}"><input type="hidden" name="target" value="{{.Target}}"><input type="hidden" name="all" value="true"><button type="submit" id="replay-all">Replay all matching in {{.Queue}}</button></form>
<form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/purge"><input type="hidden" name="reason" value="{{.Reason}}"><input type="hidden" name="target" value="{{.Target}}"><input type="hidden" name="all" value="true"><button type="submit" class="danger" id="purge-all">Purge all matching in {{.Queue}}</button></form>
</p>{{end}}
{{template "foot"}}{{end}}

{{define "show"}}{{template "head"}}
<p><a href="/dlq/ui?queue={{.Queue}}">← {{.Queue}}</a></p>
<h1>Message <code>{{.ID}}</code></h1>
<table id="summary">
<tr><th>Queue</th><td>{{.Queue}}</td></tr><tr><th>Target</th><td><code>{{.Target}}</code></td></tr>
<tr><th>Reason</th><td>{{.Reason}}</td></tr><tr><th>Attempts</th><td>{{.Attempts}}</td></tr>
<tr><th>First failure</th><td>{{ts .FirstFailure}}</td></tr><tr><th>Last failure</th><td>{{ts .LastFailure}}</td></tr>
<tr><th>Dead at</th><td>{{ts .DeadAt}}</td></tr>{{with .DedupeID}}<tr><th>Dedupe id</th><td><code>{{.}}</code></td></tr>{{end}}
</table>
<h2>Attempts</h2>
<table id="history"><tr><th>#</th><th>Started</th><th>Failed</th><th>Error</th><th>Status</th><th>Response body (first bytes)</th></tr>
{{range .History}}<tr><td>{{.N}}</td><td>{{ts .StartedAt}}</td><td>{{ts .FailedAt}}</td><td>{{.Error}}</td><td>{{if .Status}}{{.Status}}{{end}}</td><td><code>{{s .Body}}</code></td></tr>{{end}}
</table>
<h2>Payload ({{.PayloadBytes}} bytes)</h2>
{{if .Payload}}<pre id="payload">{{.Payload}}</pre>{{else}}<p>(not UTF-8 text; use <code>levee dlq show --json</code>)</p>{{end}}
<h2>Headers</h2><table>{{range $k, $v := .Headers}}<tr><th>{{$k}}</th><td><code>{{range $v}}{{.}} {{end}}</code></td></tr>{{end}}</table>
<p>
<form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/replay"><input type="hidden" name="id" value="{{.ID}}"><button type="submit" id="replay">Replay this message</button></form>
<form class="inline" method="post" action="/dlq/ui/{{seg .Queue}}/purge"><input type="hidden" name="id" value="{{.ID}}"><button type="submit" class="danger" id="purge">Purge this message</button></form>
</p>
{{template "foot"}}{{end}}
`))
