//go:build etcdv3

package main

import (
	"github.com/kvtools/etcdv3"
	"github.com/kvtools/valkeyrie"
)

// Untested: github.com/kvtools/etcdv3 was refused by the Go module proxy (403) when this was written.
func init() {
	openers["etcdv3"] = opener{etcdv3.StoreName, func(string) valkeyrie.Config { return &etcdv3.Config{} }}
}
