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
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/store/dynamodb"
	"github.com/leveehq/levee/store/memory"
	"github.com/leveehq/levee/store/postgres"
	"github.com/leveehq/levee/store/redis"
	"github.com/leveehq/levee/store/sqlite"
)

// StoreConfig is the store section: which idempotency store, and its
// connection. It cannot change on reload.
type StoreConfig struct {
	// Type is sqlite (default), memory, redis, postgres or dynamodb.
	Type     string         `yaml:"type"`
	SQLite   SQLiteConfig   `yaml:"sqlite"`
	Redis    RedisConfig    `yaml:"redis"`
	Postgres PostgresConfig `yaml:"postgres"`
	DynamoDB DynamoDBConfig `yaml:"dynamodb"`
	Memory   MemoryConfig   `yaml:"memory"`
	// CleanupInterval is how often expired records are deleted from the
	// SQLite and PostgreSQL stores (idempotency records past their
	// retention, and the queue store's ended dedupe windows; cleanup.go).
	// Default 1m; 0 turns the clean-up off (then delete them yourself, or
	// the file and tables grow with every request). Redis, DynamoDB and
	// memory expire records themselves.
	CleanupInterval *Duration `yaml:"cleanup_interval"`
}

// SQLiteConfig configures the embedded default store.
type SQLiteConfig struct {
	// Path of the database file. Default "levee.db". Several levee
	// processes on one host may share it.
	Path string `yaml:"path"`
}

// MemoryConfig configures the in-process store (single replica, no
// durability: for trials and tests).
type MemoryConfig struct {
	// MaxEntries caps the records held. Default 1,000,000.
	MaxEntries int `yaml:"max_entries"`
}

// RedisConfig configures a Redis connection (store.redis, rate_limit.redis).
type RedisConfig struct {
	// Addr is host:port. Default "127.0.0.1:6379".
	Addr string `yaml:"addr"`
	// Username and Password authenticate (ACL). Default none.
	Username string `yaml:"username"`
	Password string `yaml:"password" redact:"secret"`
	// DB is the database number. Default 0.
	DB int `yaml:"db"`
	// Prefix starts every key. Default "levee:idem:".
	Prefix string `yaml:"prefix"`
	// FlushDelay (store.redis only) is how long a Redis command may wait
	// for those of concurrent requests, to share one write and one read
	// with them. It applies only while other commands are outstanding (a
	// lone request never waits). Default 500µs; 0 writes every command at
	// once; at most 10ms.
	FlushDelay *Duration `yaml:"flush_delay"`
}

// DefaultRedisFlushDelay is store.redis.flush_delay's default: at 100
// concurrent requests on one core, 0 → 200µs → 500µs took an idempotent
// request from 139 to 107 to 92 µs of CPU (1ms: no better), at most
// 0.5 ms more per Redis call, and only under concurrency
// (docs/benchmarks.md).
const DefaultRedisFlushDelay = 500 * time.Microsecond

// PostgresConfig configures the PostgreSQL store.
type PostgresConfig struct {
	// URL is a libpq connection URL; use ${ENV} for the password.
	// Required when type is postgres.
	URL string `yaml:"url" redact:"dsn"`
	// Schema holds levee's tables. Default "levee".
	Schema string `yaml:"schema"`
}

// DynamoDBConfig configures the DynamoDB store.
type DynamoDBConfig struct {
	// Table is the table name. Required when type is dynamodb.
	Table string `yaml:"table"`
	// Region is the AWS region. Default: from the AWS environment.
	Region string `yaml:"region"`
	// Endpoint overrides the service URL (local emulators). Default none.
	Endpoint string `yaml:"endpoint"`
	// CreateTable creates the table at start if it is missing. Default false.
	CreateTable bool `yaml:"create_table"`
	// PartitionKey is the table's partition key attribute. Default "pk".
	PartitionKey string `yaml:"partition_key"`
	// PartitionKeyPrefix starts every partition key value, to keep levee's
	// items apart in a table shared with other data. Default "".
	PartitionKeyPrefix string `yaml:"partition_key_prefix"`
	// SortKey is the sort key attribute of a shared (single-table) table.
	// Default "" (a dedicated table without a sort key).
	SortKey string `yaml:"sort_key"`
	// SortKeyValue is the sort key of every levee item when sort_key is
	// set. Default "levee#idempotency".
	SortKeyValue string `yaml:"sort_key_value"`
	// TTLAttribute holds each item's deletion time for DynamoDB's TTL.
	// Default "ttl".
	TTLAttribute string `yaml:"ttl_attribute"`
}

// Defaults implements config.Section.
func (c *StoreConfig) Defaults() {
	config.Default(&c.Type, "sqlite")
	config.Default(&c.SQLite.Path, "levee.db")
	config.Default(&c.Redis.Addr, "127.0.0.1:6379")
	config.Default(&c.Redis.Prefix, redis.DefaultPrefix)
	if c.Redis.FlushDelay == nil {
		d := Duration(DefaultRedisFlushDelay)
		c.Redis.FlushDelay = &d
	}
	config.Default(&c.Postgres.Schema, "levee")
	config.Default(&c.Memory.MaxEntries, memory.DefaultMaxEntries)
	if c.CleanupInterval == nil {
		d := Duration(DefaultCleanupInterval)
		c.CleanupInterval = &d
	}
}

// Validate implements config.Section.
func (c *StoreConfig) Validate(r *config.Report, path string) {
	switch c.Type {
	case "sqlite", "memory", "redis":
	case "postgres":
		if c.Postgres.URL == "" {
			r.Bad(config.Join(path, "postgres.url"), "required when store.type is postgres")
		}
	case "dynamodb":
		if c.DynamoDB.Table == "" {
			r.Bad(config.Join(path, "dynamodb.table"), "required when store.type is dynamodb")
		}
	default:
		r.Bad(config.Join(path, "type"), "unknown store %q (want sqlite, memory, redis, postgres or dynamodb)", c.Type)
	}
	if c.DynamoDB.SortKeyValue != "" && c.DynamoDB.SortKey == "" {
		r.Bad(config.Join(path, "dynamodb.sort_key_value"), "needs dynamodb.sort_key (a single-table layout)")
	}
	if d := c.CleanupInterval; d != nil && *d != 0 && (d.D() < time.Second || d.D() > 24*time.Hour) {
		r.Bad(config.Join(path, "cleanup_interval"), "must be 0 (off) or between 1s and 24h, got %v", d.D())
	}
	if d := c.Redis.FlushDelay; d != nil && (*d < 0 || d.D() > 10*time.Millisecond) {
		r.Bad(config.Join(path, "redis.flush_delay"), "must be between 0 and 10ms, got %v", d.D())
	}
}

// cleanupInterval is CleanupInterval, its default when unset (a Config
// built without Defaults).
func (c *StoreConfig) cleanupInterval() time.Duration {
	if c.CleanupInterval == nil {
		return DefaultCleanupInterval
	}
	return c.CleanupInterval.D()
}

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
		return openRedisStore(ctx, c.Redis)
	case "postgres":
		return openPostgresStore(ctx, c.Postgres)
	case "dynamodb":
		return openDynamoDBStore(ctx, c.DynamoDB)
	}
	return nil, nil, fmt.Errorf("gateway: unknown store type %q", c.Type)
}

// openRedisStore opens the Redis idempotency store on rueidis.
func openRedisStore(ctx context.Context, r RedisConfig) (idempotency.Store, func() error, error) {
	// rueidis: it pipelines the commands of concurrent requests on
	// shared connections, half the client CPU of go-redis per call
	// under load (docs/decisions.md).
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{r.Addr}, Username: r.Username, Password: r.Password,
		SelectDB: r.DB, DisableCache: true,
		Dialer:           net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second},
		ConnWriteTimeout: 2 * time.Second, // idempotency.store_timeout bounds every call
		// While other commands are outstanding, wait up to flush_delay
		// for more, so that one write and one read carry those of many
		// concurrent requests (a lone command is written at once).
		MaxFlushDelay: r.flushDelay(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: store redis %s: %w", r.Addr, err)
	}
	st := redis.NewRueidis(client, redis.Options{Prefix: r.Prefix})
	if err := st.Load(ctx); err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("gateway: store redis %s: %w", r.Addr, err)
	}
	return st, func() error { client.Close(); return nil }, nil
}

// defaultPGMaxConns is the pool size of the gateway's PostgreSQL pools when
// the URL names none (pool_max_conns): pgxpool's default, max(4, CPUs),
// starves a gateway whose group-commit writers, enqueue flushers, claims
// and lookups each hold a connection while their round trip runs.
const defaultPGMaxConns = 32

// newPGPool opens a pool for url with defaultPGMaxConns unless the URL sets
// pool_max_conns.
func newPGPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(url, "pool_max_conns") {
		pcfg.MaxConns = defaultPGMaxConns
	}
	return pgxpool.NewWithConfig(ctx, pcfg)
}

// openPostgresStore opens the PostgreSQL store and migrates its schema.
func openPostgresStore(ctx context.Context, pc PostgresConfig) (idempotency.Store, func() error, error) {
	pool, err := newPGPool(ctx, pc.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: store postgres: %w", err)
	}
	st, err := postgres.New(pool, postgres.Options{Schema: pc.Schema})
	if err == nil {
		err = st.Migrate(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("gateway: store postgres: %w", err)
	}
	return st, func() error { pool.Close(); return nil }, nil
}

// openDynamoDBStore opens the DynamoDB store (creating its table if asked).
func openDynamoDBStore(ctx context.Context, d DynamoDBConfig) (idempotency.Store, func() error, error) {
	var optFns []func(*awsconfig.LoadOptions) error
	if d.Region != "" {
		optFns = append(optFns, awsconfig.WithRegion(d.Region))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, optFns...)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
	}
	client := awsdynamodb.NewFromConfig(awsCfg, func(o *awsdynamodb.Options) {
		if d.Endpoint != "" {
			o.BaseEndpoint = aws.String(d.Endpoint)
		}
	})
	opts := dynamodb.Options{Table: d.Table, PartitionKey: d.PartitionKey, PartitionKeyPrefix: d.PartitionKeyPrefix,
		SortKey: d.SortKey, SortKeyValue: d.SortKeyValue, TTLAttribute: d.TTLAttribute}
	if d.CreateTable {
		if err := dynamodb.CreateTable(ctx, client, opts); err != nil {
			return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
		}
	}
	st, err := dynamodb.New(client, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: store dynamodb: %w", err)
	}
	return st, func() error { return nil }, nil
}

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
