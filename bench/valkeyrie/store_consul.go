//go:build consul

package main

import (
	"github.com/kvtools/consul"
	"github.com/kvtools/valkeyrie"
)

func init() {
	openers["consul"] = opener{storeName: consul.StoreName, config: func(string) valkeyrie.Config { return &consul.Config{} }}
}
