//go:build dynamodb

package main

import (
	"github.com/kvtools/dynamodb"
	"github.com/kvtools/valkeyrie"
)

// Untested: github.com/kvtools/dynamodb was refused by the Go module proxy (403) when this was written.
func init() {
	openers["dynamodb"] = opener{dynamodb.StoreName, func(string) valkeyrie.Config { return &dynamodb.Config{Bucket: "kvbench_valkeyrie"} }}
}
