package redislimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/store/redis/redislimit"
)

// The script switches calendar periods by the Redis clock: given the
// boundaries of three periods around it, it charges the one holding Redis
// TIME, denies until that period ends (retry = end − now), and starts
// from zero in the next one. The periods here are under two seconds long
// so the switch happens during the test.
func TestCalendarScriptSwitchesPeriodAtBoundary(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	ctx := context.Background()
	script := goredis.NewScript(redislimit.DecideScript())
	key := "levee:rltest:" + randHex(6) + ":{all}:q:x"
	t.Cleanup(func() { c.Del(context.Background(), key) })
	now, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	us := now.UnixMicro()
	b := fmt.Sprintf("%d:%d:%d:%d", us-2_000_000, us-1_000_000, us+800_000, us+1_800_000)
	run := func() []int64 {
		t.Helper()
		v, err := script.Run(ctx, c, []string{key}, "0", "q", 1, b, 1).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		return v // admit, allowed, remaining, retry_us, reset_us
	}
	if v := run(); v[0] != 1 || v[2] != 0 || v[4] <= 0 || v[4] > 800_000 {
		t.Fatalf("first: %v, want admitted, 0 left, reset within the 800 ms left", v)
	}
	v := run()
	if v[0] != 0 || v[3] <= 0 || v[3] > 800_000 || v[3] != v[4] {
		t.Fatalf("second: %v, want denied until the period ends", v)
	}
	wait := time.Duration(v[3])*time.Microsecond + 50*time.Millisecond
	time.Sleep(wait)
	if v := run(); v[0] != 1 || v[2] != 0 || v[4] <= 0 || v[4] > 1_000_000 {
		t.Fatalf("next period: %v, want admitted afresh with its end within 1 s", v)
	}
	if got, _ := c.Get(ctx, key).Result(); got != fmt.Sprintf("1:%d", us+1_800_000) {
		t.Fatalf("state %q, want 1 unit charged to the period ending at %d", got, us+1_800_000)
	}
}
