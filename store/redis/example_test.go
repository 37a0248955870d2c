package redis_test

import (
	"context"
	"fmt"
	"log"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/redis"
)

// Example wires a Redis store into the idempotency engine. It needs a
// running Redis server, so it has no checked output.
func Example() {
	ctx := context.Background()
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	store := redis.New(client, redis.Options{Prefix: "myapp:idem:"})
	// Optional: load the Lua scripts now so the first requests cost one
	// round trip per store operation.
	if err := store.Load(ctx); err != nil {
		log.Fatal(err)
	}
	engine := idempotency.New(store, idempotency.Options{})

	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	charge := func(context.Context) ([]byte, error) { return []byte(`{"id":"ch_1"}`), nil }
	for range 2 {
		res, err := engine.Do(ctx, "order-42", fp, charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s replayed=%v\n", res.Value, res.Replayed)
	}
}

// ExampleNewRueidis is the same on a rueidis client, the one the levee
// gateway uses: concurrent callers' commands share connections and, with
// MaxFlushDelay, writes.
func ExampleNewRueidis() {
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:   []string{"127.0.0.1:6379"},
		DisableCache:  true,
		MaxFlushDelay: 500 * time.Microsecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	store := redis.NewRueidis(client, redis.Options{Prefix: "myapp:idem:"})
	if err := store.Load(context.Background()); err != nil {
		log.Fatal(err)
	}
	engine := idempotency.New(store, idempotency.Options{})
	_ = engine
}
