package redis

import (
	"context"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/internal/redisscript"
)

// backend is what the store needs from a Redis client library: run one of
// its scripts on one key, HMGET, and load the scripts. goredisBackend and
// rueidisBackend adapt the two libraries levee supports.
type backend interface {
	eval(ctx context.Context, sc *script, key string, args []string) (reply, error)
	hmget(ctx context.Context, key string, fields []string) ([]field, error)
	load(ctx context.Context, scripts []*script) error
}

// script is one Lua script, prepared for both libraries.
type script struct {
	gr  *goredis.Script
	ru  *rueidis.Lua
	src string
}

func newScript(src string) *script {
	return &script{gr: goredis.NewScript(src), ru: rueidis.NewLuaScript(src), src: src}
}

// reply is a script's reply: an integer, or an array of (possibly absent)
// strings.
type reply struct {
	isInt bool
	n     int64
	arr   []field
}

// field is one array element or hash field: absent for nil (or Lua false).
type field struct {
	s  string
	ok bool
}

// goredisBackend runs on any go-redis client.
type goredisBackend struct{ c rediser }

func (b goredisBackend) eval(ctx context.Context, sc *script, key string, args []string) (reply, error) {
	a := make([]any, len(args))
	for i, s := range args {
		a[i] = s
	}
	v, err := sc.gr.Run(ctx, b.c, []string{key}, a...).Result()
	if err != nil {
		return reply{}, err
	}
	switch v := v.(type) {
	case int64:
		return reply{isInt: true, n: v}, nil
	case []any:
		fs, err := anyFields(v)
		return reply{arr: fs}, err
	}
	return reply{}, fmt.Errorf("unexpected script reply %T", v)
}

func (b goredisBackend) hmget(ctx context.Context, key string, fields []string) ([]field, error) {
	v, err := b.c.HMGet(ctx, key, fields...).Result()
	if err != nil {
		return nil, err
	}
	return anyFields(v)
}

func anyFields(v []any) ([]field, error) {
	fs := make([]field, len(v))
	for i, x := range v {
		switch x := x.(type) {
		case nil:
		case string:
			fs[i] = field{x, true}
		default:
			return nil, fmt.Errorf("%w: element %d has type %T", errCorrupt, i, x)
		}
	}
	return fs, nil
}

func (b goredisBackend) load(ctx context.Context, scripts []*script) error {
	gs := make([]*goredis.Script, len(scripts))
	for i, s := range scripts {
		gs[i] = s.gr
	}
	return redisscript.Load(ctx, b.c, gs...)
}

// rueidisBackend runs on a rueidis client, which pipelines the commands
// of concurrent callers on shared connections (one write and one read for
// many of them).
type rueidisBackend struct{ c rueidis.Client }

func (b rueidisBackend) eval(ctx context.Context, sc *script, key string, args []string) (reply, error) {
	res := sc.ru.Exec(ctx, b.c, []string{key}, args)
	msg, err := res.ToMessage()
	if err != nil {
		return reply{}, err
	}
	if msg.IsInt64() {
		n, _ := msg.AsInt64()
		return reply{isInt: true, n: n}, nil
	}
	arr, err := msg.ToArray()
	if err != nil {
		return reply{}, fmt.Errorf("unexpected script reply: %w", err)
	}
	fs, err := msgFields(arr)
	return reply{arr: fs}, err
}

func (b rueidisBackend) hmget(ctx context.Context, key string, fields []string) ([]field, error) {
	arr, err := b.c.Do(ctx, b.c.B().Hmget().Key(key).Field(fields...).Build()).ToArray()
	if err != nil {
		return nil, err
	}
	return msgFields(arr)
}

func msgFields(arr []rueidis.RedisMessage) ([]field, error) {
	fs := make([]field, len(arr))
	for i := range arr {
		m := &arr[i]
		if m.IsNil() {
			continue
		}
		if m.IsBool() { // Lua false, as RESP3 sends it
			if v, _ := m.ToBool(); !v {
				continue
			}
		}
		s, err := m.ToString()
		if err != nil {
			return nil, fmt.Errorf("%w: element %d: %w", errCorrupt, i, err)
		}
		fs[i] = field{s, true}
	}
	return fs, nil
}

func (b rueidisBackend) load(ctx context.Context, scripts []*script) error {
	nodes := b.c.Nodes()
	if len(nodes) == 0 {
		return errors.New("no Redis node")
	}
	for _, n := range nodes {
		for _, s := range scripts {
			if err := n.Do(ctx, n.B().ScriptLoad().Script(s.src).Build()).Error(); err != nil {
				return err
			}
		}
	}
	return nil
}
