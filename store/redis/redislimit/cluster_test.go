package redislimit_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/ratelimit/ratelimittest"
	"github.com/leveehq/levee/store/redis/redislimit"
)

// clusterClient connects to the Redis Cluster of LEVEE_REDIS_CLUSTER_ADDRS
// (comma-separated; scripts/test starts one on 127.0.0.1:30001-30003),
// skipping the test when it is unset or down (failing it when CI=true).
func clusterClient(t testing.TB) *goredis.ClusterClient {
	t.Helper()
	addrs := os.Getenv("LEVEE_REDIS_CLUSTER_ADDRS")
	if addrs == "" {
		unavailable(t, "LEVEE_REDIS_CLUSTER_ADDRS is not set (scripts/test starts a 3-node cluster on 30001-30003)")
	}
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: strings.Split(addrs, ","), ContextTimeoutEnabled: true, PoolSize: 64})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error { return m.Ping(ctx).Err() }); err != nil {
		unavailable(t, "Redis Cluster at "+addrs+" is not reachable: "+err.Error())
	}
	return c
}

func newClusterStore(t testing.TB, c *goredis.ClusterClient, opts redislimit.Options) *redislimit.Store {
	t.Helper()
	opts.Prefix = "levee:rltest:" + randHex(6) + ":"
	s, err := redislimit.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
			deletePrefix(m, opts.Prefix)
			return nil
		})
	})
	return s
}

// The whole suite on a real 3-node Cluster: with the constant hash tag
// (one slot) and with ShardByKey (keys spread over the nodes).
func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	for _, shard := range []bool{false, true} {
		name := "OneTag"
		if shard {
			name = "ShardByKey"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ratelimittest.Run(t, ratelimittest.Harness{
				NewStore: func(t testing.TB) ratelimit.Store {
					return newClusterStore(t, c, redislimit.Options{ShardByKey: shard})
				},
			})
		})
	}
}

// With ShardByKey, keys land on more than one node of the Cluster (the
// point of the option), and Warm reaches every node.
func TestClusterShardsSpreadAndWarm(t *testing.T) {
	t.Parallel()
	c := clusterClient(t)
	s := newClusterStore(t, c, redislimit.Options{ShardByKey: true})
	ctx := context.Background()
	if err := s.Warm(ctx, 4); err != nil {
		t.Fatal(err)
	}
	p := policy(t, "spread", "10/s")
	nodes := map[string]bool{}
	for i := range 64 {
		d := ratelimit.Demand{Policy: p, Key: "tenant-" + randHex(4) + string(rune('a'+i%26)), Cost: 1}
		rs := make([]ratelimit.Result, 1)
		if _, err := s.Decide(ctx, time.Now(), []ratelimit.Demand{d}, rs); err != nil || !rs[0].Allowed {
			t.Fatalf("decide: %v %+v", err, rs[0])
		}
		m, err := c.MasterForKey(ctx, s.Key(d))
		if err != nil {
			t.Fatal(err)
		}
		nodes[m.Options().Addr] = true
	}
	if len(nodes) < 2 {
		t.Fatalf("64 keys landed on %d node(s), want them spread", len(nodes))
	}
}
