//go:build zookeeper

package main

import (
	"github.com/kvtools/valkeyrie"
	"github.com/kvtools/zookeeper"
)

// Untested: github.com/kvtools/zookeeper was refused by the Go module proxy (403) when this was written.
func init() {
	openers["zookeeper"] = opener{zookeeper.StoreName, func(string) valkeyrie.Config { return &zookeeper.Config{} }}
}
