//go:build boltdb

package main

import (
	"github.com/kvtools/boltdb"
	"github.com/kvtools/valkeyrie"
)

func init() {
	openers["boltdb"] = opener{storeName: boltdb.StoreName, config: func(string) valkeyrie.Config { return &boltdb.Config{Bucket: "kvbench"} }}
}
