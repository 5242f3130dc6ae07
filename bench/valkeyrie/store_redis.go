//go:build redis

package main

import (
	"github.com/kvtools/redis"
	"github.com/kvtools/valkeyrie"
)

// Untested: github.com/kvtools/redis was refused by the Go module proxy (403) when this was written.
func init() {
	openers["redis"] = opener{redis.StoreName, func(string) valkeyrie.Config { return &redis.Config{} }}
}
