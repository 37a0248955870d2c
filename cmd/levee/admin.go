package main

import (
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
	"os/user"
	"strings"
)

// adminClient calls a running gateway's admin API (the key tools and the
// DLQ), with the flags every such command shares.
type adminClient struct {
	url, token, operator string
	asJSON               bool
}

// adminFlags registers --admin, --token, --operator and --json on fs.
func adminFlags(fs *flag.FlagSet) *adminClient {
	a := &adminClient{}
	fs.StringVar(&a.url, "admin", "http://127.0.0.1:9090", "admin listener URL")
	fs.StringVar(&a.token, "token", os.Getenv("LEVEE_ADMIN_TOKEN"), "admin token (default $LEVEE_ADMIN_TOKEN)")
	fs.StringVar(&a.operator, "operator", defaultOperator(), "who you are, for the gateway's log")
	fs.BoolVar(&a.asJSON, "json", false, "print the admin API's JSON")
	return a
}

func defaultOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

var errNoToken = errors.New("no admin token: set LEVEE_ADMIN_TOKEN or --token (the gateway's admin.token)")

// call sends one admin API request (body, if not nil, as JSON) and returns
// the status and the answer's bytes; a problem document becomes an error
// with its status, title and detail.
func (a *adminClient) call(ctx context.Context, method, path string, q url.Values, body any) (int, []byte, error) {
	u := strings.TrimSuffix(a.url, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("X-Levee-Operator", a.operator)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode >= 300 {
		var p struct{ Title, Detail string }
		if json.Unmarshal(data, &p) == nil && p.Title != "" {
			return resp.StatusCode, nil, fmt.Errorf("%d %s: %s", resp.StatusCode, p.Title, p.Detail)
		}
		return resp.StatusCode, nil, fmt.Errorf("admin API: %s: %s", resp.Status, bytes.TrimSpace(data))
	}
	return resp.StatusCode, data, nil
}
