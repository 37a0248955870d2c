package chaos_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"

	"github.com/leveehq/levee/chaos"
)

// A test client whose requests to /v1/pay meet a 503 with Retry-After.
func ExampleTransport() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}))
	defer api.Close()
	cfg, err := chaos.ParseConfig("faults.yaml", []byte(`
seed: 1
faults:
  - name: outage
    match: {path_prefix: /v1/pay}
    status: 503
    retry_after: 2s
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	in, _ := chaos.NewInjector(cfg, chaos.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c := &http.Client{Transport: &chaos.Transport{Injector: in}}
	for _, path := range []string{"/v1/pay", "/v1/other"} {
		resp, err := c.Get(api.URL + path)
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
		fmt.Printf("%s %d Retry-After=%q\n", path, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	fmt.Println(in.Counts())
	// Output:
	// /v1/pay 503 Retry-After="2"
	// /v1/other 200 Retry-After=""
	// map[outage:1 requests:2]
}
