package gateway

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDLQPageEscapesIDsInLinks: a webhook message's id holds its route's
// name, which may hold '/', '?', '#' or '%': the page's links and forms
// carry it as one escaped path segment, and the admin mux's pattern hands
// the handler the id as it is.
func TestDLQPageEscapesIDsInLinks(t *testing.T) {
	id := "levee:webhook:stripe/prod?x#y%z:0a"
	var buf bytes.Buffer
	row := uiRow{DLQMessage: DLQMessage{Queue: "q/1", ID: id}}
	if err := uiTemplates.ExecuteTemplate(&buf, "list", map[string]any{"Queue": "q/1", "Rows": []uiRow{row}}); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	link := `/dlq/ui/q%2F1/levee:webhook:stripe%2Fprod%3Fx%23y%25z:0a`
	if !strings.Contains(page, `href="`+link+`"`) || !strings.Contains(page, `action="/dlq/ui/q%2F1/replay"`) {
		t.Fatalf("the page's link to the message is not one escaped segment per name:\n%s", page)
	}
	mux := http.NewServeMux()
	var gotQ, gotID string
	mux.HandleFunc("GET /dlq/ui/{queue}/{id}", func(w http.ResponseWriter, r *http.Request) { gotQ, gotID = r.PathValue("queue"), r.PathValue("id") })
	mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, link, nil))
	if gotQ != "q/1" || gotID != id {
		t.Fatalf("the link resolves to queue %q id %q, want %q %q", gotQ, gotID, "q/1", id)
	}
}
