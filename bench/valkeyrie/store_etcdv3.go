//go:build etcdv3

package main

import (
	"github.com/kvtools/etcdv3"
	"github.com/kvtools/valkeyrie"
)

func init() {
	openers["etcdv3"] = opener{storeName: etcdv3.StoreName, config: func(string) valkeyrie.Config { return &etcdv3.Config{} }}
}
