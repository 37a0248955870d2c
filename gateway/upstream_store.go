package gateway

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/store/redis/redislimit"
	"github.com/leveehq/levee/store/redis/redisresilience"
)

// UpstreamStoreConfig is where upstreams marked `shared: true` keep their
// breaker, pauses and client-side quota, so that every replica sees the
// same breaker, pauses together after a 429 and draws on one quota.
type UpstreamStoreConfig struct {
	// Type is memory (default: nothing is shared) or redis.
	Type string `yaml:"type" reload:"restart"`
	// Redis is the connection when Type is redis. Default: store.redis's
	// address and credentials, prefix "levee:res:" (the quota's keys
	// under "<prefix>rl:").
	Redis RedisConfig `yaml:"redis" reload:"restart"`
}

// Defaults implements config.Section (the connection's address comes
// from store.redis, see inheritRedis, run by the root).
func (c *UpstreamStoreConfig) Defaults() {
	config.Default(&c.Type, "memory")
	config.Default(&c.Redis.Prefix, redisresilience.DefaultPrefix)
}

// Validate implements config.Section.
func (c *UpstreamStoreConfig) Validate(r *config.Report, p string) {
	if c.Type != "memory" && c.Type != "redis" {
		r.Bad(config.Join(p, "type"), "unknown type %q (want memory or redis)", c.Type)
	}
}

// inheritRedis fills the connection left empty from store.redis.
func (c *UpstreamStoreConfig) inheritRedis(st RedisConfig) {
	if c.Redis.Addr == "" {
		c.Redis.Addr = st.Addr
		if c.Redis.Username == "" && c.Redis.Password == "" {
			c.Redis.Username, c.Redis.Password = st.Username, st.Password
		}
	}
	if c.Redis.Addr == "" {
		c.Redis.Addr = "127.0.0.1:6379"
	}
}

// sharedStores are the Redis stores of shared upstreams, opened once
// (upstream_store cannot change on reload).
type sharedStores struct {
	client *goredis.Client
	res    *redisresilience.Store
	limit  ratelimit.Store
}

// openShared opens the upstream store's Redis stores, checked within 10 s.
func openShared(c UpstreamStoreConfig) (*sharedStores, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := goredis.NewClient(&goredis.Options{
		Addr: c.Redis.Addr, Username: c.Redis.Username, Password: c.Redis.Password, DB: c.Redis.DB,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		ContextTimeoutEnabled: true, // bounded by the request's deadline
		Protocol:              redisProtocol,
	})
	res, err := redisresilience.New(client, redisresilience.Options{Prefix: c.Redis.Prefix})
	if err == nil {
		err = res.Load(ctx)
	}
	var lim *redislimit.Store
	if err == nil {
		lim, err = redislimit.New(client, redislimit.Options{Prefix: c.Redis.Prefix + "rl:"})
	}
	if err == nil {
		err = lim.Load(ctx)
	}
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("gateway: upstream store redis %s: %w", c.Redis.Addr, err)
	}
	return &sharedStores{client: client, res: res, limit: lim}, nil
}

// share points the stateful policies of s at the shared stores.
func (st *sharedStores) share(s *resilience.Settings) {
	if s.Breaker != nil {
		b := *s.Breaker
		b.Store = st.res
		s.Breaker = &b
	}
	if s.Pace != nil {
		p := *s.Pace
		p.Store = st.res
		s.Pace = &p
	}
	if s.Limit != nil {
		l := *s.Limit
		l.Store = st.limit
		s.Limit = &l
	}
}

// CloseUpstreamStore closes the shared upstream store's connections, if
// any were opened (at shutdown).
func (g *Gateway) CloseUpstreamStore() error {
	g.upstreams.mu.Lock()
	defer g.upstreams.mu.Unlock()
	if st := g.upstreams.shared; st != nil {
		g.upstreams.shared = nil
		return st.client.Close()
	}
	return nil
}
