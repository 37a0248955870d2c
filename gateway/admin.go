package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/problem"
)

// Admin endpoints that read records or change state (idempotency keys,
// the DLQ) go through requireToken: they need `Authorization: Bearer
// <admin.token>`, compared in constant time, and are off (404) while no
// token is configured. Every call that changes state is logged with the
// caller's address and the operator it names (X-Levee-Operator).

// requireToken wraps an admin handler with the bearer-token check. The
// token is read per request, so a reload can rotate it.
func (s *Server) requireToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		token := s.cfg.Admin.Token
		s.mu.Unlock()
		if token == "" {
			problem.Write(w, problem.Problem{Type: problem.AdminEndpointDisabled, Status: http.StatusNotFound,
				Title: "Admin endpoint disabled", Detail: "set admin.token (e.g. ${LEVEE_ADMIN_TOKEN}) to enable the endpoints that read idempotency records or change state"})
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !tokenEqual(got, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="levee-admin"`)
			problem.Write(w, problem.Problem{Type: problem.AdminUnauthorized, Status: http.StatusUnauthorized,
				Title: "Admin token required", Detail: "send Authorization: Bearer <admin.token>"})
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "admin request refused", slog.String("path", r.URL.Path),
				slog.String("remote", r.RemoteAddr), slog.Bool("token_sent", ok))
			return
		}
		h(w, r)
	}
}

// tokenEqual compares in constant time, also in the length: both sides
// are hashed first.
func tokenEqual(got, want string) bool {
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// operator names who made an admin change, for the log.
func operator(r *http.Request) []slog.Attr {
	op := r.Header.Get("X-Levee-Operator")
	if len(op) > 100 {
		op = op[:100]
	}
	return []slog.Attr{slog.String("operator", op), slog.String("remote", r.RemoteAddr)}
}

// KeyRecord is an idempotency record as the admin API shows it (GET
// /keys/{key}, GET /keys): never the stored body itself, only its size.
type KeyRecord struct {
	Key         string       `json:"key"`
	Route       string       `json:"route"`
	State       string       `json:"state"`
	Fingerprint string       `json:"fingerprint"`
	Token       uint64       `json:"token"`
	LeaseUntil  time.Time    `json:"lease_until"`
	ExpiresAt   time.Time    `json:"expires_at"`
	Response    *KeyResponse `json:"response,omitempty"`
}

// KeyResponse describes a stored response (GET) or carries the one an
// operator stores when resolving a key (POST …/resolve, with Body).
type KeyResponse struct {
	Status      int         `json:"status"`
	Header      http.Header `json:"header,omitempty"`
	BodyBytes   int         `json:"body_bytes"`
	BodyOmitted bool        `json:"body_omitted,omitempty"`
	Body        []byte      `json:"body,omitempty"` // base64 in JSON; only when resolving
}

// KeyResolution is the body of POST /keys/{key}/resolve: either Release
// (a retry executes) or Response (retries replay it).
type KeyResolution struct {
	Release         bool         `json:"release,omitempty"`
	Response        *KeyResponse `json:"response,omitempty"`
	Token           uint64       `json:"token,omitempty"`
	AllowInProgress bool         `json:"allow_in_progress,omitempty"`
}

func keyRecord(route string, rec *idempotency.Record) KeyRecord {
	kr := KeyRecord{Key: rec.Key, Route: route, State: rec.State.String(), Fingerprint: hex.EncodeToString(rec.Fingerprint[:]),
		Token: rec.Token, LeaseUntil: rec.LeaseUntil.UTC(), ExpiresAt: rec.ExpiresAt.UTC()}
	if r := rec.Response; r != nil {
		kr.Response = &KeyResponse{Status: r.Status, Header: r.Header, BodyBytes: len(r.Body), BodyOmitted: r.BodyOmitted}
	}
	return kr
}

// keyEngine finds the engine of the route named in ?route=, answering the
// problem itself when there is none.
func (s *Server) keyEngine(w http.ResponseWriter, r *http.Request) (*idempotency.Engine, string, bool) {
	name := r.URL.Query().Get("route")
	eng := s.gw.state.Load().engine(name)
	if eng == nil {
		adminProblem(w, http.StatusNotFound, "No such idempotency route", fmt.Sprintf("route %q does not exist or has no idempotency block (give ?route=NAME)", name))
		return nil, "", false
	}
	return eng, name, true
}

func adminProblem(w http.ResponseWriter, status int, title, detail string) {
	problem.Write(w, problem.Problem{Type: problem.AdminRequestInvalid, Status: status, Title: title, Detail: detail})
}

// adminStoreError answers a failed engine call.
func adminStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, idempotency.ErrNotFound):
		adminProblem(w, http.StatusNotFound, "No such key", "no live record: never stored, released, or past its retention")
	case errors.Is(err, idempotency.ErrNotResolvable):
		adminProblem(w, http.StatusConflict, "Key cannot be resolved", err.Error())
	case errors.Is(err, idempotency.ErrFenced):
		adminProblem(w, http.StatusConflict, "Key changed", err.Error()+": inspect it again")
	case errors.Is(err, idempotency.ErrListUnsupported):
		adminProblem(w, http.StatusNotImplemented, "Store cannot list", err.Error())
	case errors.Is(err, idempotency.ErrInvalidState):
		adminProblem(w, http.StatusBadRequest, "Invalid state", err.Error())
	default:
		problem.Write(w, problem.Problem{Type: problem.IdempotencyStoreDown, Status: http.StatusServiceUnavailable,
			Title: "Idempotency store unavailable", Detail: err.Error(), RetryAfter: time.Second})
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// handleKeyShow serves GET /keys/{key}?route=R: the record under a scoped
// key (levee keys show computes it from the client key and credential,
// which never leave the operator's machine).
func (s *Server) handleKeyShow(w http.ResponseWriter, r *http.Request) {
	eng, route, ok := s.keyEngine(w, r)
	if !ok {
		return
	}
	rec, err := eng.Inspect(r.Context(), r.PathValue("key"))
	if err != nil {
		adminStoreError(w, err)
		return
	}
	writeJSON(w, keyRecord(route, rec))
}

// handleKeyList serves GET /keys?route=R&state=unknown|in_progress
// [&after=K][&limit=N].
func (s *Server) handleKeyList(w http.ResponseWriter, r *http.Request) {
	eng, route, ok := s.keyEngine(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	st, err := idempotency.ParseState(q.Get("state"))
	if err != nil {
		adminStoreError(w, err)
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 1000 {
			adminProblem(w, http.StatusBadRequest, "Invalid limit", "limit must be 1 to 1000")
			return
		}
	}
	recs, err := eng.List(r.Context(), st, q.Get("after"), limit)
	if err != nil {
		adminStoreError(w, err)
		return
	}
	out := make([]KeyRecord, 0, len(recs))
	for i := range recs {
		out = append(out, keyRecord(route, &recs[i]))
	}
	writeJSON(w, out)
}

// handleKeyResolve serves POST /keys/{key}/resolve?route=R with a
// KeyResolution body, and logs who resolved what.
func (s *Server) handleKeyResolve(w http.ResponseWriter, r *http.Request) {
	eng, route, ok := s.keyEngine(w, r)
	if !ok {
		return
	}
	var kr KeyResolution
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kr); err != nil {
		adminProblem(w, http.StatusBadRequest, "Invalid resolution", err.Error())
		return
	}
	if kr.Release == (kr.Response != nil) {
		adminProblem(w, http.StatusBadRequest, "Invalid resolution", `give exactly one of "release": true or "response": {...}`)
		return
	}
	res := idempotency.Resolution{Token: kr.Token, AllowInProgress: kr.AllowInProgress}
	action := "release"
	if kr.Response != nil {
		if kr.Response.Status < 100 || kr.Response.Status > 999 {
			adminProblem(w, http.StatusBadRequest, "Invalid resolution", "response.status must be an HTTP status code")
			return
		}
		res.Response = &idempotency.Response{Status: kr.Response.Status, Header: kr.Response.Header, Body: kr.Response.Body}
		action = fmt.Sprintf("store response %d (%d bytes)", kr.Response.Status, len(kr.Response.Body))
	}
	key := r.PathValue("key")
	err := eng.Resolve(r.Context(), key, res)
	attrs := append(operator(r), slog.String("route", route), slog.String("key", key), slog.String("action", action))
	if err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "idempotency key resolution failed", append(attrs, slog.String("error", err.Error()))...)
		adminStoreError(w, err)
		return
	}
	s.log.LogAttrs(r.Context(), slog.LevelInfo, "idempotency key resolved", attrs...)
	rec, err := eng.Inspect(r.Context(), key)
	if errors.Is(err, idempotency.ErrNotFound) { // released
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		adminStoreError(w, err)
		return
	}
	writeJSON(w, keyRecord(route, rec))
}
