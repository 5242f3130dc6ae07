//go:build boltdb

package main

import (
	"github.com/kvtools/boltdb"
	"github.com/kvtools/valkeyrie"
)

// Untested: github.com/kvtools/boltdb was refused by the Go module proxy (403) when this was written.
func init() {
	openers["boltdb"] = opener{boltdb.StoreName, func(string) valkeyrie.Config { return &boltdb.Config{Bucket: "kvbench"} }}
}
