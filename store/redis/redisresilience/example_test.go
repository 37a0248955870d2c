package redisresilience_test

import (
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/store/redis/redisresilience"
)

// Every replica builds the same executor on the same Redis: they share
// the breaker named after the upstream and its pauses.
func Example() {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	defer client.Close()
	store, err := redisresilience.New(client, redisresilience.Options{Prefix: "myapp:res:"})
	if err != nil {
		panic(err)
	}
	exec, err := resilience.New(resilience.Settings{
		Name:    "stripe",
		Breaker: &resilience.BreakerSettings{Store: store},
		Pace:    &resilience.PaceSettings{Store: store},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(exec.Upstream(), store.BreakerKey("stripe"), store.PauseKey("stripe"))
	// Output: stripe myapp:res:b:stripe myapp:res:p:stripe
}
