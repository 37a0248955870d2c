package redisresilience_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/store/redis/redisresilience"
)

const childEnv = "LEVEE_RESILIENCE_CHILD_PREFIX"

var processSettings = resilience.BreakerSettings{ConsecutiveFailures: 3, Cooldown: 3 * time.Second, Sync: time.Millisecond} // the cooldown outlasts a child process's exit under load

func processBreaker(t testing.TB, addr, pfx string) *resilience.Breaker {
	c := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	st, err := redisresilience.New(c, redisresilience.Options{Prefix: pfx})
	if err != nil {
		t.Fatal(err)
	}
	s := processSettings
	s.Store = st
	b, err := resilience.NewBreaker("partner", s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHelperProcess is the other replica of TestSharedBreakerAcrossProcesses:
// run as a child process, it records the failures given in its argument
// and prints the state it ends in.
func TestHelperProcess(t *testing.T) {
	pfx := os.Getenv(childEnv)
	if pfx == "" {
		t.Skip("run by TestSharedBreakerAcrossProcesses")
	}
	b := processBreaker(t, redisAddr(t), pfx)
	ctx := context.Background()
	for _, code := range strings.Split(os.Getenv(childEnv+"_CODES"), ",") {
		tk, err := b.Allow(ctx, time.Now())
		if err != nil {
			fmt.Println("rejected")
			continue
		}
		var st int
		fmt.Sscan(code, &st)
		b.Done(ctx, time.Now(), tk, resilience.Outcome{StatusCode: st})
	}
	fmt.Println("state", b.State())
}

func child(t *testing.T, pfx, codes string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+pfx, childEnv+"_CODES="+codes)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return string(out)
}

// TestSharedBreakerAcrossProcesses: another process's failures open this
// process's breaker; this process's probe closes it for the other.
func TestSharedBreakerAcrossProcesses(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	pfx := prefix(t, newClient(t, addr))
	if out := child(t, pfx, "503,503,503"); !strings.Contains(out, "state open") {
		t.Fatalf("child did not open the breaker:\n%s", out)
	}
	b := processBreaker(t, addr, pfx)
	ctx := context.Background()
	_, err := b.Allow(ctx, time.Now())
	var oe *resilience.OpenError
	if !errors.As(err, &oe) {
		t.Fatalf("this process's breaker admitted after the other process opened it: %v", err)
	}
	time.Sleep(oe.Remaining(time.Now()) + 50*time.Millisecond)
	tk, err := b.Allow(ctx, time.Now())
	if err != nil || b.State() != resilience.BreakerHalfOpen {
		t.Fatalf("after the cooldown: %v, %v", err, b.State())
	}
	if out := child(t, pfx, "200"); !strings.Contains(out, "rejected") {
		t.Fatalf("the other process got a second probe slot:\n%s", out)
	}
	b.Done(ctx, time.Now(), tk, resilience.Outcome{StatusCode: 200})
	if out := child(t, pfx, "200"); !strings.Contains(out, "state closed") || strings.Contains(out, "rejected") {
		t.Fatalf("the other process does not see the breaker closed:\n%s", out)
	}
}
