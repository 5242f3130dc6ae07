//go:build redis

package main

import (
	"context"

	"github.com/kvtools/redis"
	"github.com/kvtools/valkeyrie"
	"github.com/kvtools/valkeyrie/store"
)

// valkeyrie's registered Redis constructor stores raw values (RawCodec), with which its
// AtomicPut, AtomicDelete and locks fail (their Lua script decodes the stored value as JSON);
// its own tests open the store with the JSON codec, so the benchmark does too.
func init() {
	openers["redis"] = opener{
		storeName: redis.StoreName,
		config:    func(string) valkeyrie.Config { return &redis.Config{} },
		open: func(ctx context.Context, endpoint string) (store.Store, error) {
			return redis.NewWithCodec(ctx, []string{endpoint}, &redis.Config{}, &redis.JSONCodec{})
		},
	}
}
