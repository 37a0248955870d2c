package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"
)

// Handler delivers one message. Returning nil acknowledges it (it is
// deleted). An error is one failed attempt: the message is retried after a
// backoff, or dead-lettered after the last attempt; *HTTPError,
// RetryAfter, Permanent and ErrTargetGone refine that, and Defer says the
// delivery was not attempted at all (retried later, not counted). A Handler must
// return when ctx ends (the attempt timed out or the worker is stopping).
type Handler interface {
	Handle(ctx context.Context, d *Delivery) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, d *Delivery) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, d *Delivery) error { return f(ctx, d) }

// Defaults of WorkerConfig.
const (
	DefaultConcurrency    = 8
	DefaultMaxAttempts    = 10
	DefaultAttemptTimeout = 30 * time.Second
	DefaultBackoffBase    = time.Second
	DefaultBackoffMax     = 10 * time.Minute
	DefaultMaxRetryAfter  = time.Hour
	DefaultPollInterval   = 200 * time.Millisecond
)

// WorkerConfig configures a Worker. The zero value of every field but
// Handler selects its default.
type WorkerConfig struct {
	// Handler delivers the messages. Required.
	Handler Handler
	// Concurrency is how many deliveries run at once. Default
	// DefaultConcurrency (8).
	Concurrency int
	// MaxPerTarget is how many of those may go to one target, so that a
	// slow or hanging target never takes every slot. Default
	// max(1, Concurrency/4); at most Concurrency.
	MaxPerTarget int
	// MaxAttempts is the number of attempts before the DLQ. Default
	// DefaultMaxAttempts (10).
	MaxAttempts int
	// AttemptTimeout bounds each attempt (the handler's ctx deadline).
	// Default DefaultAttemptTimeout (30s).
	AttemptTimeout time.Duration
	// Lease is how long a claimed message stays invisible to other
	// workers; a worker that dies holding it loses it when the lease ends.
	// Default AttemptTimeout + 30s; it must exceed AttemptTimeout.
	Lease time.Duration
	// BackoffBase and BackoffMax shape the wait after failed attempt n:
	// uniform in [0, min(BackoffMax, BackoffBase·2^(n−1))]. Defaults
	// DefaultBackoffBase (1s) and DefaultBackoffMax (10m).
	BackoffBase, BackoffMax time.Duration
	// MaxRetryAfter caps a delay a handler asks for (RetryAfter,
	// HTTPError.RetryAfter). Default DefaultMaxRetryAfter (1h).
	MaxRetryAfter time.Duration
	// PollInterval is how often an idle worker looks for messages enqueued
	// by other processes or become available after a backoff (enqueues
	// through the same Queue wake it at once). Default
	// DefaultPollInterval (200ms).
	PollInterval time.Duration
	// Jitter draws the backoff from [0, ceiling]. Default uniform
	// (math/rand/v2); tests inject their own.
	Jitter func(ceiling time.Duration) time.Duration
	// OnTargetDisabled, when set, is called after a target is disabled
	// because a handler returned ErrTargetGone (or a 410 HTTPError).
	OnTargetDisabled func(target string, err error)
	// Logger receives backend errors the worker retries past. Default
	// slog.Default().
	Logger *slog.Logger
}

func (c WorkerConfig) withDefaults() (WorkerConfig, error) {
	if c.Handler == nil {
		return c, errors.New("queue: WorkerConfig.Handler is required")
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("queue: WorkerConfig.%s %v is negative", name, *d)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	if c.Concurrency < 0 || c.MaxPerTarget < 0 || c.MaxAttempts < 0 {
		return c, errors.New("queue: WorkerConfig.Concurrency, MaxPerTarget and MaxAttempts must not be negative")
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxPerTarget == 0 {
		c.MaxPerTarget = max(1, c.Concurrency/4)
	}
	if c.MaxPerTarget > c.Concurrency {
		return c, fmt.Errorf("queue: WorkerConfig.MaxPerTarget %d exceeds Concurrency %d", c.MaxPerTarget, c.Concurrency)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	for _, f := range []struct {
		d    *time.Duration
		v    time.Duration
		name string
	}{
		{&c.AttemptTimeout, DefaultAttemptTimeout, "AttemptTimeout"},
		{&c.BackoffBase, DefaultBackoffBase, "BackoffBase"},
		{&c.BackoffMax, DefaultBackoffMax, "BackoffMax"},
		{&c.MaxRetryAfter, DefaultMaxRetryAfter, "MaxRetryAfter"},
		{&c.PollInterval, DefaultPollInterval, "PollInterval"},
	} {
		if err := def(f.d, f.v, f.name); err != nil {
			return c, err
		}
	}
	if err := def(&c.Lease, c.AttemptTimeout+30*time.Second, "Lease"); err != nil {
		return c, err
	}
	if c.Lease <= c.AttemptTimeout {
		return c, fmt.Errorf("queue: WorkerConfig.Lease %v must exceed AttemptTimeout %v", c.Lease, c.AttemptTimeout)
	}
	if c.Jitter == nil {
		c.Jitter = func(d time.Duration) time.Duration { return rand.N(d + 1) }
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Worker claims messages of one Queue and delivers them to a Handler with
// retries, per-target fairness, the DLQ after the last attempt, and a
// visibility lease. Start and Stop are idempotent and safe to call from
// several goroutines (river's model); a stopped Worker may be started again.
type Worker struct {
	q   *Queue
	cfg WorkerConfig

	life    sync.Mutex // serializes Start and Stop
	cancel  context.CancelFunc
	stopped chan struct{}

	// ac is the backend as an AckClaimer, if it is one: acks of finished
	// deliveries then wait in acks for the next claim, which carries them.
	ac    AckClaimer
	ackMu sync.Mutex
	acks  []AckRef
}

// NewWorker returns a Worker for q, or an error naming the invalid field.
func (q *Queue) NewWorker(cfg WorkerConfig) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &Worker{q: q, cfg: cfg}
	w.ac, _ = q.b.(AckClaimer)
	return w, nil
}

// addAck keeps an acknowledgement for the next claim.
func (w *Worker) addAck(a AckRef) {
	w.ackMu.Lock()
	w.acks = append(w.acks, a)
	w.ackMu.Unlock()
}

// takeAcks returns the acknowledgements waiting for a claim.
func (w *Worker) takeAcks() []AckRef {
	w.ackMu.Lock()
	defer w.ackMu.Unlock()
	acks := w.acks
	w.acks = nil
	return acks
}

// ackEach sends acknowledgements each on its own, all at once (as the
// deliveries would have, each bounded by settle's timeout, so that a slow
// or failing backend delays the loop by one timeout, not one per
// acknowledgement): those of a claim that failed, and those left when the
// worker stops.
func (w *Worker) ackEach(ctx context.Context, acks []AckRef) {
	var wg sync.WaitGroup
	for _, a := range acks {
		wg.Go(func() {
			w.settle(ctx, func(ctx context.Context) error { return w.q.b.Ack(ctx, a.Queue, a.ID, a.Token) })
		})
	}
	wg.Wait()
}

// Start starts delivering in background goroutines and returns at once; it
// is a no-op when already started. Deliveries stop when ctx ends or Stop is
// called. It never fails: backend errors are logged and retried at
// PollInterval.
func (w *Worker) Start(ctx context.Context) error {
	w.life.Lock()
	defer w.life.Unlock()
	if w.cancel != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	w.stopped = make(chan struct{})
	go w.run(ctx, w.stopped)
	return nil
}

// Stop stops claiming, cancels the in-flight deliveries' contexts, waits
// for their handlers to return and their outcomes to be recorded, and
// returns. A delivery interrupted by Stop is released for another worker at
// once, without counting the attempt. Stop is a no-op when not started.
func (w *Worker) Stop() {
	w.life.Lock()
	defer w.life.Unlock()
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.stopped
	w.cancel, w.stopped = nil, nil
}

// slots tracks the in-flight deliveries per target.
type slots struct {
	mu       sync.Mutex
	total    int
	byTarget map[string]int
	freed    chan struct{} // 1-buffered: a slot was freed
}

func (s *slots) release(target string) {
	s.mu.Lock()
	s.total--
	if s.byTarget[target]--; s.byTarget[target] == 0 {
		delete(s.byTarget, target)
	}
	s.mu.Unlock()
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

func (w *Worker) run(ctx context.Context, stopped chan struct{}) {
	var wg sync.WaitGroup
	defer close(stopped)
	// After the deliveries ended: their acknowledgements no claim took.
	defer func() { w.ackEach(ctx, w.takeAcks()) }()
	defer wg.Wait()
	s := &slots{byTarget: map[string]int{}, freed: make(chan struct{}, 1)}
	b := w.q.b
	for {
		wake, gen := w.q.wake()
		s.mu.Lock()
		free := w.cfg.Concurrency - s.total
		var exclude []string
		for t, n := range s.byTarget {
			if n >= w.cfg.MaxPerTarget {
				exclude = append(exclude, t)
			}
		}
		s.mu.Unlock()
		got := 0
		var skip map[string]bool
		if free > 0 {
			now := w.q.cfg.Now()
			// The claim is not canceled by Stop: a claim canceled mid-way
			// may have taken messages on the server (PostgreSQL commits
			// the UPDATE whose answer the canceled call never reads), and
			// those would wait out their lease and come back counted. Run
			// to its end, a claim's messages reach deliver, which releases
			// them uncounted when Stop is under way.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
			req := ClaimRequest{
				Queue: w.q.cfg.Name, Now: now, LeaseUntil: now.Add(w.cfg.Lease),
				Limit: free, PerTarget: w.cfg.MaxPerTarget, Exclude: exclude,
			}
			var cs []Claimed
			var err error
			var acks []AckRef
			if w.ac != nil {
				acks = w.takeAcks()
			}
			if len(acks) > 0 {
				// The finished deliveries' acknowledgements commit with the
				// claim (their lease-lost answers, like Ack's, need nothing).
				if _, cs, err = w.ac.AckAndClaim(cctx, acks, req); err != nil {
					w.ackEach(ctx, acks)
				}
			} else {
				cs, err = b.Claim(cctx, req)
			}
			cancel()
			if err != nil && ctx.Err() == nil {
				w.cfg.Logger.Error("queue: claim failed", "queue", w.q.cfg.Name, "err", err)
			}
			for _, c := range cs {
				s.mu.Lock()
				over := s.byTarget[c.Target] >= w.cfg.MaxPerTarget
				if !over {
					s.total++
					s.byTarget[c.Target]++
				}
				s.mu.Unlock()
				if over {
					// Claimed beyond the target's share: hand it back
					// uncounted, to be claimed when a slot frees.
					w.settle(ctx, func(ctx context.Context) error {
						return b.Nack(ctx, Nack{Queue: c.Queue, ID: c.ID, Token: c.Token, Attempts: c.Attempt - 1, History: c.History, AvailableAt: now})
					})
					continue
				}
				got++
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer s.release(c.Target)
					w.deliver(ctx, c)
				}()
			}
			if got > 0 && got == free {
				continue
			}
			if err == nil && len(cs) == 0 && len(exclude) > 0 {
				// Nothing claimable but messages of targets at their share
				// (as far as this claim could see): enqueues for those
				// targets alone do not make a claim worth trying again
				// (each would scan their backlog for nothing); a freed
				// slot, the poll or any other wake-up does.
				skip = make(map[string]bool, len(exclude))
				for _, t := range exclude {
					skip[t] = true
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		t := time.NewTimer(w.cfg.PollInterval)
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-wake:
				if skip != nil {
					var again bool
					if again, wake, gen = w.q.rewake(gen, skip); !again {
						continue wait
					}
				}
			case <-s.freed:
			case <-t.C:
			}
			break
		}
		t.Stop()
	}
}

// claimTimeout bounds one claim, which Stop does not cancel.
const claimTimeout = 10 * time.Second

// settle records an outcome with a context that outlives the worker's (so
// that Stop still records what finished), bounded in time.
func (w *Worker) settle(ctx context.Context, f func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := f(ctx); err != nil && !errors.Is(err, ErrLeaseLost) {
		// The message stays leased and is redelivered when the lease ends.
		w.cfg.Logger.Error("queue: recording an outcome failed", "queue", w.q.cfg.Name, "err", err)
	}
}

// lostLease is the error recorded for an attempt whose worker vanished.
const lostLease = "lease expired: the worker delivering this attempt stopped or crashed"

func (w *Worker) deliver(ctx context.Context, c Claimed) {
	b := w.q.b
	now := w.q.cfg.Now
	history := c.History
	for len(history) < c.Attempt-1 {
		t := now()
		history = append(history, Attempt{N: len(history) + 1, StartedAt: t, FailedAt: t, Error: lostLease})
	}
	bury := func(reason Reason) {
		w.settle(ctx, func(ctx context.Context) error {
			return b.Bury(ctx, Burial{Queue: c.Queue, ID: c.ID, Token: c.Token, Attempts: len(history), History: history, Reason: reason, At: now()})
		})
	}
	release := func() { // uncounted, available at once
		w.settle(ctx, func(ctx context.Context) error {
			return b.Nack(ctx, Nack{Queue: c.Queue, ID: c.ID, Token: c.Token, Attempts: c.Attempt - 1, History: c.History, AvailableAt: now()})
		})
	}
	if ctx.Err() != nil {
		// Claimed while Stop was under way: not attempted.
		release()
		return
	}
	if c.Attempt > w.cfg.MaxAttempts {
		bury(ReasonMaxAttempts) // the last attempt's worker died
		return
	}
	start := now()
	actx, cancel := context.WithTimeout(ctx, w.cfg.AttemptTimeout)
	err := call(actx, w.cfg.Handler, &Delivery{Message: c.Message, Attempt: c.Attempt})
	cancel()
	if err == nil {
		if w.ac != nil {
			// Sent with the claim that this delivery's freed slot starts
			// (or by run's end, when stopping).
			w.addAck(AckRef{Queue: c.Queue, ID: c.ID, Token: c.Token})
			return
		}
		w.settle(ctx, func(ctx context.Context) error { return b.Ack(ctx, c.Queue, c.ID, c.Token) })
		return
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Interrupted by Stop: not the target's fault.
		release()
		return
	}
	if de := (*DeferError)(nil); errors.As(err, &de) {
		// Not attempted: back after the delay, uncounted (the attempts
		// lost to crashes, filled in above, stay counted).
		at := now().Add(min(max(de.Delay, 0), w.cfg.MaxRetryAfter))
		w.settle(ctx, func(ctx context.Context) error {
			return b.Nack(ctx, Nack{Queue: c.Queue, ID: c.ID, Token: c.Token, Attempts: len(history), History: history, AvailableAt: at})
		})
		return
	}
	a := Attempt{N: c.Attempt, StartedAt: start, FailedAt: now(), Error: err.Error()}
	var he *HTTPError
	if errors.As(err, &he) {
		a.Status = he.Status
		if len(he.Body) > 0 {
			a.Body = append([]byte(nil), he.Body[:min(len(he.Body), MaxBodyBytes)]...)
		}
	}
	history = append(history, a)
	switch {
	case errors.Is(err, ErrTargetGone):
		w.settle(ctx, func(ctx context.Context) error {
			return b.SetTarget(ctx, TargetState{Queue: c.Queue, Target: c.Target, Disabled: true, Reason: err.Error(), Since: now()})
		})
		bury(ReasonTargetGone)
		if w.cfg.OnTargetDisabled != nil {
			w.cfg.OnTargetDisabled(c.Target, err)
		}
	case errors.Is(err, ErrPermanent):
		bury(ReasonPermanent)
	case c.Attempt >= w.cfg.MaxAttempts:
		bury(ReasonMaxAttempts)
	default:
		delay := w.cfg.Jitter(BackoffCeiling(c.Attempt, w.cfg.BackoffBase, w.cfg.BackoffMax))
		if ra := retryDelay(err); ra > 0 {
			delay = min(ra, w.cfg.MaxRetryAfter)
		}
		w.settle(ctx, func(ctx context.Context) error {
			return b.Nack(ctx, Nack{Queue: c.Queue, ID: c.ID, Token: c.Token, Attempts: c.Attempt, History: history, AvailableAt: a.FailedAt.Add(delay)})
		})
	}
}

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, h Handler, d *Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("queue: handler panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return h.Handle(ctx, d)
}
