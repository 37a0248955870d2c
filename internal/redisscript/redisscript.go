// Package redisscript loads Lua scripts into Redis script caches, for the
// two packages that run levee's scripts (store/redis, store/redis/redislimit).
package redisscript

import (
	"context"

	goredis "github.com/redis/go-redis/v9"
)

// sharded is implemented by *goredis.Ring and *goredis.ClusterClient.
type sharded interface {
	ForEachShard(ctx context.Context, fn func(ctx context.Context, c *goredis.Client) error) error
}

// Load loads scripts into the cache of c's server, or of every shard when
// c is a Ring or a Cluster client, so that the first EVALSHA of each costs
// one round trip instead of two (NOSCRIPT, then EVAL).
func Load(ctx context.Context, c goredis.Scripter, scripts ...*goredis.Script) error {
	load := func(ctx context.Context, c goredis.Scripter) error {
		for _, sc := range scripts {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if sh, ok := c.(sharded); ok {
		return sh.ForEachShard(ctx, func(ctx context.Context, c *goredis.Client) error { return load(ctx, c) })
	}
	return load(ctx, c)
}
