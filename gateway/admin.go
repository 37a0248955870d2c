package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"

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
