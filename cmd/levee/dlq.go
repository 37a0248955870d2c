package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leveehq/levee/gateway"
)

const dlqUsage = `levee dlq — list, inspect, replay and purge dead messages on a running gateway (admin API)

Usage:
  levee dlq list   [--queue Q] [--target URL] [--reason R] [--older-than D] [--limit N] [--after SEQ]
  levee dlq show   --queue Q --id ID
  levee dlq replay --queue Q (--id ID ... | --target URL | --reason R | --older-than D | --all)
  levee dlq purge  --queue Q (--id ID ... | --target URL | --reason R | --older-than D | --all)

Reasons: max_attempts, permanent, target_gone. --id may be repeated.
Replay moves messages back oldest first at the queue's replay_rate, resets their attempts and keeps
their ids (the idempotent consumer still delivers each once); one replay per queue runs at a time.

Common flags: --admin URL (default http://127.0.0.1:9090), --token T (default $LEVEE_ADMIN_TOKEN),
--operator NAME (logged with every replay and purge; default user@host), --json (print the API's JSON).
`

type dlqFlags struct {
	fs *flag.FlagSet
	*adminClient
	queue, target, reason, olderThan string
	ids                              multiFlag
	limit                            int
	after                            int64
	all                              bool
	timeout                          time.Duration
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func newDLQFlags(name string, stderr io.Writer) *dlqFlags {
	f := &dlqFlags{fs: flag.NewFlagSet("levee dlq "+name, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.adminClient = adminFlags(f.fs)
	f.fs.StringVar(&f.queue, "queue", "", "queue name")
	f.fs.Var(&f.ids, "id", "message id (repeatable)")
	f.fs.StringVar(&f.target, "target", "", "only messages to this target URL")
	f.fs.StringVar(&f.reason, "reason", "", "only messages dead for this reason")
	f.fs.StringVar(&f.olderThan, "older-than", "", "only messages dead for longer than this (e.g. 1h)")
	f.fs.IntVar(&f.limit, "limit", 0, "at most this many (list: one page, default 100; replay: at most N)")
	f.fs.Int64Var(&f.after, "after", 0, "list: the page after this seq (needs --queue)")
	f.fs.BoolVar(&f.all, "all", false, "replay or purge every dead message of the queue")
	f.fs.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long (a replay of many messages takes a while)")
	return f
}

func runDLQ(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, dlqUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	if cmd != "list" && cmd != "show" && cmd != "replay" && cmd != "purge" {
		fmt.Fprintf(stderr, "levee dlq: unknown command %q\n\n%s", cmd, dlqUsage)
		return 2
	}
	f := newDLQFlags(cmd, stderr)
	if err := f.fs.Parse(args[1:]); err != nil {
		return 2
	}
	if err := f.check(cmd); err != nil {
		fmt.Fprintf(stderr, "levee dlq %s: %v\n", cmd, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	var err error
	switch cmd {
	case "list":
		err = f.list(ctx, stdout)
	case "show":
		err = f.show(ctx, stdout)
	default:
		err = f.op(ctx, cmd, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "levee dlq %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func (f *dlqFlags) check(cmd string) error {
	if f.token == "" {
		return errNoToken
	}
	if cmd != "list" && f.queue == "" {
		return errors.New("--queue is required")
	}
	if cmd == "show" && len(f.ids) != 1 {
		return errors.New("give one --id")
	}
	if (cmd == "replay" || cmd == "purge") && !f.all && len(f.ids) == 0 && f.target == "" && f.reason == "" && f.olderThan == "" {
		return fmt.Errorf("give --id, --target, --reason or --older-than, or --all to %s every dead message of the queue", cmd)
	}
	return nil
}

func (f *dlqFlags) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"queue": f.queue, "target": f.target, "reason": f.reason, "older_than": f.olderThan} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for _, id := range f.ids {
		q.Add("id", id)
	}
	if f.limit > 0 {
		q.Set("limit", strconv.Itoa(f.limit))
	}
	if f.after > 0 {
		q.Set("after", strconv.FormatInt(f.after, 10))
	}
	if f.all {
		q.Set("all", "true")
	}
	return q
}

func (f *dlqFlags) list(ctx context.Context, w io.Writer) error {
	_, data, err := f.call(ctx, http.MethodGet, "/dlq", f.query(), nil)
	if err != nil || f.asJSON {
		if err == nil {
			_, err = w.Write(data)
		}
		return err
	}
	var l gateway.DLQList
	if err := json.Unmarshal(data, &l); err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tID\tREASON\tATTEMPTS\tDEAD AT\tTARGET\tLAST ERROR")
	for _, m := range l.Messages {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", m.Queue, m.ID, m.Reason, m.Attempts, m.DeadAt.Format(time.RFC3339), m.Target, oneLine(m.LastError, 80))
	}
	if len(l.Messages) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.Next != 0 {
		fmt.Fprintf(w, "more: --after %d\n", l.Next)
	}
	return nil
}

func (f *dlqFlags) show(ctx context.Context, w io.Writer) error {
	_, data, err := f.call(ctx, http.MethodGet, "/dlq/"+url.PathEscape(f.queue)+"/"+url.PathEscape(f.ids[0]), nil, nil)
	if err != nil || f.asJSON {
		if err == nil {
			_, err = w.Write(data)
		}
		return err
	}
	var m gateway.DLQMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	fmt.Fprintf(w, "id:        %s\nqueue:     %s\ntarget:    %s\nreason:    %s\nattempts:  %d\nfirst failure: %s\nlast failure:  %s\ndead at:   %s\npayload:   %d bytes\n",
		m.ID, m.Queue, m.Target, m.Reason, m.Attempts, m.FirstFailure.Format(time.RFC3339Nano), m.LastFailure.Format(time.RFC3339Nano), m.DeadAt.Format(time.RFC3339Nano), m.PayloadBytes)
	for _, a := range m.History {
		status := ""
		if a.Status != 0 {
			status = fmt.Sprintf(" [%d] %s", a.Status, oneLine(string(a.Body), 120))
		}
		fmt.Fprintf(w, "  attempt %d at %s: %s%s\n", a.N, a.FailedAt.Format(time.RFC3339Nano), a.Error, status)
	}
	return nil
}

func (f *dlqFlags) op(ctx context.Context, op string, w io.Writer) error {
	_, data, err := f.call(ctx, http.MethodPost, "/dlq/"+url.PathEscape(f.queue)+"/"+op, f.query(), nil)
	if err != nil || f.asJSON {
		if err == nil {
			_, err = w.Write(data)
		}
		return err
	}
	var res gateway.DLQResult
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	verb := map[string]string{"replay": "replayed", "purge": "purged"}[op]
	fmt.Fprintf(w, "%s %d message(s) of queue %s\n", verb, res.Messages, res.Queue)
	if res.Error != "" {
		return fmt.Errorf("stopped early: %s", res.Error)
	}
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
