package gateway

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awsdynamodb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/ratelimit"
	rlredis "github.com/leveehq/levee/ratelimit/redis"
	"github.com/leveehq/levee/store/dynamodb"
	"github.com/leveehq/levee/store/memory"
	"github.com/leveehq/levee/store/postgres"
	"github.com/leveehq/levee/store/redis"
	"github.com/leveehq/levee/store/sqlite"
)

// OpenStore opens the idempotency store a config names, checks that it
// answers within 10 s, and returns it with its close function.
func OpenStore(ctx context.Context, c StoreConfig) (idempotency.Store, func() error, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nop := func() error { return nil }
	switch c.Type {
	case "memory":
		return memory.New(memory.Options{MaxEntries: c.Memory.MaxEntries}), nop, nil
	case "sqlite":
		st, err := sqlite.Open(c.SQLite.Path, sqlite.Options{})
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store sqlite %s: %w", c.SQLite.Path, err)
		}
		return st, st.Close, nil
	case "redis":
		// rueidis: it pipelines the commands of concurrent requests on
		// shared connections, half the client CPU of go-redis per call
		// under load (docs/decisions.md).
		client, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{c.Redis.Addr}, Username: c.Redis.Username, Password: c.Redis.Password,
			SelectDB: c.Redis.DB, DisableCache: true,
			Dialer:           net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second},
			ConnWriteTimeout: 2 * time.Second, // idempotency.store_timeout bounds every call
			// While other commands are outstanding, wait up to flush_delay
			// for more, so that one write and one read carry those of many
			// concurrent requests (a lone command is written at once).
			MaxFlushDelay: c.Redis.flushDelay(),
		})
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store redis %s: %w", c.Redis.Addr, err)
		}
		st := redis.NewRueidis(client, redis.Options{Prefix: c.Redis.Prefix})
		if err := st.Load(ctx); err != nil {
			client.Close()
			return nil, nil, fmt.Errorf("gateway: store redis %s: %w", c.Redis.Addr, err)
		}
		return st, func() error { client.Close(); return nil }, nil
	case "postgres":
		pcfg, err := pgxpool.ParseConfig(c.Postgres.URL)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store postgres: %w", err)
		}
		if !strings.Contains(c.Postgres.URL, "pool_max_conns") {
			pcfg.MaxConns = 32 // pgxpool's default (4 on small machines) starves a gateway
		}
		pool, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store postgres: %w", err)
		}
		st, err := postgres.New(pool, postgres.Options{Schema: c.Postgres.Schema})
		if err == nil {
			err = st.Migrate(ctx)
		}
		if err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("gateway: store postgres: %w", err)
		}
		return st, func() error { pool.Close(); return nil }, nil
	case "dynamodb":
		var optFns []func(*awsconfig.LoadOptions) error
		if c.DynamoDB.Region != "" {
			optFns = append(optFns, awsconfig.WithRegion(c.DynamoDB.Region))
		}
		awsCfg, err := awsconfig.LoadDefaultConfig(ctx, optFns...)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
		}
		client := awsdynamodb.NewFromConfig(awsCfg, func(o *awsdynamodb.Options) {
			if c.DynamoDB.Endpoint != "" {
				o.BaseEndpoint = aws.String(c.DynamoDB.Endpoint)
			}
		})
		opts := dynamodb.Options{Table: c.DynamoDB.Table}
		if c.DynamoDB.CreateTable {
			if err := dynamodb.CreateTable(ctx, client, opts); err != nil {
				return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
			}
		}
		st, err := dynamodb.New(client, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
		}
		return st, nop, nil
	}
	return nil, nil, fmt.Errorf("gateway: unknown store type %q", c.Type)
}

// OpenRateLimitStore opens the rate-limit store a config names: an
// in-process ratelimit.Local (memory) or Redis, checked within 10 s.
// flushDelay is flush_delay with its default.
func (r RedisConfig) flushDelay() time.Duration {
	if r.FlushDelay == nil {
		return DefaultRedisFlushDelay
	}
	return r.FlushDelay.D()
}

// Both Redis clients speak RESP2 (Protocol: 2): levee uses no push
// notifications, and with RESP3 go-redis looks for pending pushes on the
// connection before every command — 6% of an idempotent request's CPU.
const redisProtocol = 2

func OpenRateLimitStore(ctx context.Context, c RateLimitConfig) (ratelimit.Store, func() error, error) {
	if c.Store != "redis" {
		return ratelimit.NewLocal(ratelimit.LocalOptions{}), func() error { return nil }, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client := goredis.NewClient(&goredis.Options{
		Addr: c.Redis.Addr, Username: c.Redis.Username, Password: c.Redis.Password, DB: c.Redis.DB,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		ContextTimeoutEnabled: true, // decisions are bounded by rate_limit.timeout
		// Every connection is opened at start and kept (Warm below,
		// MinIdleConns refills): a burst never waits for dials.
		PoolSize: c.Connections, MinIdleConns: c.Connections, ConnMaxIdleTime: -1,
		Protocol: redisProtocol,
	})
	st, err := rlredis.New(client, rlredis.Options{Prefix: c.Redis.Prefix, ConcurrencyLease: c.ConcurrencyLease.D()})
	if err == nil {
		err = st.Load(ctx)
	}
	if err == nil {
		err = st.Warm(ctx, c.Connections)
	}
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("gateway: rate-limit store redis %s: %w", c.Redis.Addr, err)
	}
	return st, client.Close, nil
}
