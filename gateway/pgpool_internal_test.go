package gateway

import (
	"context"
	"testing"
)

// newPGPool sizes every PostgreSQL pool of the gateway (the idempotency
// store's and the queue store's) at defaultPGMaxConns unless the URL sets
// pool_max_conns. pgxpool connects lazily: no server is needed here.
func TestNewPGPoolSize(t *testing.T) {
	for _, c := range []struct {
		url  string
		want int32
	}{
		{"postgres://u@127.0.0.1:1/db", defaultPGMaxConns},
		{"postgres://u@127.0.0.1:1/db?pool_max_conns=5", 5},
	} {
		pool, err := newPGPool(context.Background(), c.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().MaxConns; got != c.want {
			t.Errorf("%s: MaxConns %d, want %d", c.url, got, c.want)
		}
		pool.Close()
	}
}
