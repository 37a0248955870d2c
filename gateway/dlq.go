package gateway

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/leveehq/levee/internal/problem"
	"github.com/leveehq/levee/queue"
)

// The DLQ admin API (token-protected, like /keys):
//
//	GET  /dlq?queue=&target=&reason=&older_than=&limit=&after=   list, oldest first
//	GET  /dlq/{queue}/{id}                                       one, with every attempt
//	POST /dlq/{queue}/replay?id=&target=&reason=&older_than=&all= replay (rate-limited)
//	POST /dlq/{queue}/purge?…same filters…                       delete
//
// Replay and purge are logged with the operator (X-Levee-Operator) and
// counted (levee_dlq_operations_total, levee_dlq_operation_messages_total).

// DLQMessage is a dead message as the admin API shows it.
type DLQMessage struct {
	ID           string          `json:"id"`
	Queue        string          `json:"queue"`
	Seq          int64           `json:"seq"`
	Target       string          `json:"target"`
	Reason       string          `json:"reason"`
	Attempts     int             `json:"attempts"`
	LastError    string          `json:"last_error,omitempty"`
	FirstFailure time.Time       `json:"first_failure"`
	LastFailure  time.Time       `json:"last_failure"`
	DeadAt       time.Time       `json:"dead_at"`
	DedupeID     string          `json:"dedupe_id,omitempty"`
	PayloadBytes int             `json:"payload_bytes"`
	Payload      string          `json:"payload,omitempty"` // GET /dlq/{queue}/{id} only; UTF-8 payloads only
	Headers      http.Header     `json:"headers,omitempty"` // idem; Authorization and Cookie masked
	History      []queue.Attempt `json:"history,omitempty"` // idem
}

// DLQList is GET /dlq's answer. Next, when non-zero, is the after= of the
// next page (only with queue=).
type DLQList struct {
	Messages []DLQMessage `json:"messages"`
	Next     int64        `json:"next,omitempty"`
}

func toDLQ(m *queue.DeadMessage, full bool) DLQMessage {
	out := DLQMessage{ID: m.ID, Queue: m.Queue, Seq: m.Seq, Target: m.Target, Reason: string(m.Reason), Attempts: m.Attempts,
		FirstFailure: m.FirstFailure, LastFailure: m.LastFailure, DeadAt: m.DeadAt, DedupeID: m.DedupeID, PayloadBytes: len(m.Payload)}
	if n := len(m.History); n > 0 {
		out.LastError = m.History[n-1].Error
	}
	if full {
		if utf8.Valid(m.Payload) {
			out.Payload = string(m.Payload)
		}
		out.Headers = m.Headers.Clone()
		for _, k := range []string{"Authorization", "Cookie", "Proxy-Authorization"} {
			if out.Headers.Get(k) != "" {
				out.Headers.Set(k, "REDACTED")
			}
		}
		out.History = m.History
	}
	return out
}

func (s *Server) registerDLQ(mux *http.ServeMux) {
	mux.HandleFunc("GET /dlq", s.requireToken(s.handleDLQList))
	mux.HandleFunc("GET /dlq/{queue}/{id}", s.requireToken(s.handleDLQShow))
	mux.HandleFunc("POST /dlq/{queue}/replay", s.requireToken(s.handleDLQOp("replay")))
	mux.HandleFunc("POST /dlq/{queue}/purge", s.requireToken(s.handleDLQOp("purge")))
	s.registerDLQPage(mux)
}

// dlqFilter reads target, reason, older_than, limit, after and id from
// the query.
func dlqFilter(r *http.Request) (queue.DeadFilter, error) {
	q := r.URL.Query()
	f := queue.DeadFilter{Target: q.Get("target"), Reason: queue.Reason(q.Get("reason")), IDs: q["id"]}
	switch f.Reason {
	case "", queue.ReasonMaxAttempts, queue.ReasonPermanent, queue.ReasonTargetGone:
	default:
		return f, errors.New("reason must be max_attempts, permanent or target_gone")
	}
	if v := q.Get("older_than"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return f, errors.New("older_than must be a duration such as 1h or 30m")
		}
		f.DeadBefore = time.Now().Add(-d)
	}
	for name, dst := range map[string]*int{"limit": &f.Limit} {
		if v := q.Get(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return f, errors.New(name + " must be a non-negative integer")
			}
			*dst = n
		}
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return f, errors.New("after must be a non-negative integer")
		}
		f.AfterSeq = n
	}
	return f, nil
}

func (s *Server) dlqQueue(w http.ResponseWriter, name string) *queue.Queue {
	q := s.queues.Queue(name)
	if q == nil {
		adminProblem(w, http.StatusNotFound, "No such queue", "no queue named "+strconv.Quote(name)+" in queues")
	}
	return q
}

func dlqStoreError(w http.ResponseWriter, err error) {
	problem.Write(w, problem.Problem{Type: problem.UpstreamUnavailable, Status: http.StatusServiceUnavailable,
		Title: "Queue store unavailable", Detail: err.Error(), RetryAfter: time.Second})
}

func (s *Server) handleDLQList(w http.ResponseWriter, r *http.Request) {
	f, err := dlqFilter(r)
	if err != nil {
		adminProblem(w, http.StatusBadRequest, "Invalid filter", err.Error())
		return
	}
	names := s.queues.Names()
	if qn := r.URL.Query().Get("queue"); qn != "" {
		if s.dlqQueue(w, qn) == nil {
			return
		}
		names = []string{qn}
	} else if f.AfterSeq != 0 {
		adminProblem(w, http.StatusBadRequest, "Invalid filter", "after needs queue")
		return
	}
	out := DLQList{Messages: []DLQMessage{}}
	for _, name := range names {
		page, err := s.queues.Queue(name).List(r.Context(), f)
		if err != nil {
			dlqStoreError(w, err)
			return
		}
		for i := range page.Messages {
			out.Messages = append(out.Messages, toDLQ(&page.Messages[i], false))
		}
		if len(names) == 1 {
			out.Next = page.Next
		}
	}
	writeJSON(w, out)
}

func (s *Server) handleDLQShow(w http.ResponseWriter, r *http.Request) {
	q := s.dlqQueue(w, r.PathValue("queue"))
	if q == nil {
		return
	}
	m, err := q.Get(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, queue.ErrNotFound):
		adminProblem(w, http.StatusNotFound, "No such dead message", "not in the DLQ: never dead, replayed or purged")
	case err != nil:
		dlqStoreError(w, err)
	default:
		writeJSON(w, toDLQ(m, true))
	}
}

// DLQResult is the answer of replay and purge.
type DLQResult struct {
	Queue    string `json:"queue"`
	Op       string `json:"op"`
	Messages int    `json:"messages"`
	Error    string `json:"error,omitempty"`
}

func (s *Server) handleDLQOp(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("queue")
		q := s.dlqQueue(w, name)
		if q == nil {
			return
		}
		f, err := dlqFilter(r)
		if err != nil {
			adminProblem(w, http.StatusBadRequest, "Invalid filter", err.Error())
			return
		}
		if len(f.IDs) == 0 && f.Target == "" && f.Reason == "" && f.DeadBefore.IsZero() && r.URL.Query().Get("all") != "true" {
			adminProblem(w, http.StatusBadRequest, "Filter required", "give id, target, reason or older_than, or all=true to "+op+" every dead message of the queue")
			return
		}
		res, err := s.dlqOp(r, q, op, f)
		if errors.Is(err, queue.ErrReplayRunning) {
			adminProblem(w, http.StatusConflict, "Replay running", "a replay of this queue is already running; wait for it")
			return
		}
		if err != nil && res.Messages == 0 {
			dlqStoreError(w, err)
			return
		}
		writeJSON(w, res)
	}
}

// dlqOp runs a replay or a purge, then logs and counts it.
func (s *Server) dlqOp(r *http.Request, q *queue.Queue, op string, f queue.DeadFilter) (DLQResult, error) {
	var (
		n   int
		err error
	)
	if op == "replay" {
		n, err = q.Replay(r.Context(), f)
	} else {
		n, err = q.Purge(r.Context(), f)
	}
	res := DLQResult{Queue: q.Name(), Op: op, Messages: n}
	if err != nil {
		res.Error = err.Error()
	}
	m := s.queues.m
	m.dlqOps.WithLabelValues(q.Name(), op).Inc()
	m.dlqMessages.WithLabelValues(q.Name(), op).Add(float64(n))
	attrs := append(operator(r), slog.String("queue", q.Name()), slog.String("op", op), slog.Int("messages", n),
		slog.String("target", f.Target), slog.String("reason", string(f.Reason)), slog.Int("ids", len(f.IDs)))
	if !f.DeadBefore.IsZero() {
		attrs = append(attrs, slog.Time("dead_before", f.DeadBefore))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.log.LogAttrs(r.Context(), slog.LevelWarn, "dlq "+op, attrs...)
	return res, err
}
