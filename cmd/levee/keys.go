package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/idempotency"
)

const keysUsage = `levee keys — inspect and resolve idempotency keys on a running gateway (admin API)

Usage:
  levee keys show    --route R --key K [--tenant-credential C]
  levee keys list    --route R [--state unknown|in_progress] [--limit N]
  levee keys resolve --route R --key K [--tenant-credential C] (--release | --response FILE)
                     [--record-token N] [--allow-in-progress]

Common flags: --admin URL (default http://127.0.0.1:9090), --token T (default $LEVEE_ADMIN_TOKEN),
--operator NAME (logged with every resolve; default user@host), --json (print the API's JSON).

The key is hashed with the route and tenant credential here, as the gateway does: neither the client
key nor the credential is sent. --response FILE is the response found by reconciling with the
upstream, as raw HTTP ("HTTP/1.1 201 Created", headers, blank line, body) or as JSON
{"status": 201, "header": {...}, "body": "<base64>"}; retries with the key then replay it.
--release lets the next retry execute instead.
`

type keysFlags struct {
	fs *flag.FlagSet
	*adminClient
	route, key, tenant string
	state              string
	limit              int
	release            bool
	response           string
	recordToken        uint64
	allowInProgress    bool
}

func newKeysFlags(name string, stderr io.Writer) *keysFlags {
	f := &keysFlags{fs: flag.NewFlagSet("levee keys "+name, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.adminClient = adminFlags(f.fs)
	f.fs.StringVar(&f.route, "route", "", "route name (required)")
	switch name {
	case "show", "resolve":
		f.fs.StringVar(&f.key, "key", "", "the client's Idempotency-Key value (required)")
		f.fs.StringVar(&f.tenant, "tenant-credential", "", "the value of the route's tenant_header the client sent, if any")
	case "list":
		f.fs.StringVar(&f.state, "state", "unknown", "unknown or in_progress")
		f.fs.IntVar(&f.limit, "limit", 100, "records per page (1-1000)")
	}
	if name == "resolve" {
		f.fs.BoolVar(&f.release, "release", false, "release the key: the next retry executes")
		f.fs.StringVar(&f.response, "response", "", "store this response (raw HTTP or JSON file): retries replay it")
		f.fs.Uint64Var(&f.recordToken, "record-token", 0, "only resolve the record with this token (from keys show)")
		f.fs.BoolVar(&f.allowInProgress, "allow-in-progress", false, "also resolve a key whose holder may still run (fences it)")
	}
	return f
}

func runKeys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, keysUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	if cmd != "show" && cmd != "list" && cmd != "resolve" {
		fmt.Fprintf(stderr, "levee keys: unknown command %q\n\n%s", cmd, keysUsage)
		return 2
	}
	f := newKeysFlags(cmd, stderr)
	if err := f.fs.Parse(args[1:]); err != nil {
		return 2
	}
	if err := f.check(cmd); err != nil {
		fmt.Fprintf(stderr, "levee keys %s: %v\n", cmd, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	switch cmd {
	case "show":
		err = f.show(ctx, stdout)
	case "list":
		err = f.list(ctx, stdout)
	case "resolve":
		err = f.resolve(ctx, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "levee keys %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func (f *keysFlags) check(cmd string) error {
	if f.route == "" {
		return errors.New("--route is required")
	}
	if cmd != "list" && f.key == "" {
		return errors.New("--key is required")
	}
	if cmd == "resolve" && f.release == (f.response != "") {
		return errors.New("give exactly one of --release or --response FILE")
	}
	if f.token == "" {
		return errNoToken
	}
	return nil
}

// scopedKey hashes the key as the middleware does.
func (f *keysFlags) scopedKey() (string, error) {
	k, err := idempotency.KeyFor(f.route, f.tenant, f.key)
	if err != nil {
		return "", fmt.Errorf("--key: %w", err)
	}
	return k, nil
}

// keysCall calls the admin API on the route's keys; it returns the
// status and the answer's JSON.
func (f *keysFlags) keysCall(ctx context.Context, method, path string, q url.Values, body any) (int, json.RawMessage, error) {
	q.Set("route", f.route)
	st, data, err := f.call(ctx, method, path, q, body)
	return st, data, err
}

func (f *keysFlags) show(ctx context.Context, stdout io.Writer) error {
	key, err := f.scopedKey()
	if err != nil {
		return err
	}
	_, raw, err := f.keysCall(ctx, http.MethodGet, "/keys/"+key, url.Values{}, nil)
	if err != nil {
		return err
	}
	return f.print(stdout, raw, false)
}

func (f *keysFlags) list(ctx context.Context, stdout io.Writer) error {
	q := url.Values{"state": {f.state}, "limit": {fmt.Sprint(f.limit)}}
	_, raw, err := f.keysCall(ctx, http.MethodGet, "/keys", q, nil)
	if err != nil {
		return err
	}
	return f.print(stdout, raw, true)
}

func (f *keysFlags) resolve(ctx context.Context, stdout io.Writer) error {
	key, err := f.scopedKey()
	if err != nil {
		return err
	}
	body := gateway.KeyResolution{Release: f.release, Token: f.recordToken, AllowInProgress: f.allowInProgress}
	if f.response != "" {
		if body.Response, err = readResponseFile(f.response); err != nil {
			return fmt.Errorf("--response %s: %w", f.response, err)
		}
	}
	st, raw, err := f.keysCall(ctx, http.MethodPost, "/keys/"+key+"/resolve", url.Values{}, body)
	if err != nil {
		return err
	}
	if st == http.StatusNoContent {
		fmt.Fprintf(stdout, "released: the next retry with this key on route %s executes\n", f.route)
		return nil
	}
	fmt.Fprintf(stdout, "stored: retries with this key on route %s replay it\n", f.route)
	return f.print(stdout, raw, false)
}

// readResponseFile reads a raw HTTP response or a JSON KeyResponse.
func readResponseFile(path string) (*gateway.KeyResponse, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		var kr gateway.KeyResponse
		dec := json.NewDecoder(bytes.NewReader(t))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&kr); err != nil {
			return nil, fmt.Errorf("JSON response: %w", err)
		}
		return &kr, nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(data)), nil)
	if err != nil {
		return nil, fmt.Errorf("want a raw HTTP response (HTTP/1.1 201 Created, headers, blank line, body) or JSON: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	h := resp.Header.Clone()
	for _, k := range []string{"Content-Length", "Transfer-Encoding", "Connection", "Date"} {
		h.Del(k)
	}
	return &gateway.KeyResponse{Status: resp.StatusCode, Header: h, Body: body, BodyBytes: len(body)}, nil
}

func (f *keysFlags) print(w io.Writer, raw json.RawMessage, many bool) error {
	if f.asJSON {
		_, err := w.Write(raw)
		return err
	}
	var recs []gateway.KeyRecord
	if many {
		if err := json.Unmarshal(raw, &recs); err != nil {
			return err
		}
	} else {
		var r gateway.KeyRecord
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		recs = []gateway.KeyRecord{r}
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSTATE\tTOKEN\tLEASE/HELD SINCE\tEXPIRES\tRESPONSE")
	for _, r := range recs {
		resp := "-"
		if r.Response != nil {
			resp = fmt.Sprintf("%d, %d bytes", r.Response.Status, r.Response.BodyBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Key, r.State, r.Token, r.LeaseUntil.Format(time.RFC3339), r.ExpiresAt.Format(time.RFC3339), resp)
	}
	if len(recs) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}
