//go:build zookeeper

package main

import (
	"github.com/kvtools/valkeyrie"
	"github.com/kvtools/zookeeper"
)

func init() {
	openers["zookeeper"] = opener{storeName: zookeeper.StoreName, config: func(string) valkeyrie.Config { return &zookeeper.Config{} }}
}
