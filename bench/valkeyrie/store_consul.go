//go:build consul

package main

import (
	"github.com/kvtools/consul"
	"github.com/kvtools/valkeyrie"
)

// Untested: github.com/kvtools/consul was refused by the Go module proxy (403) when this was written.
func init() {
	openers["consul"] = opener{consul.StoreName, func(string) valkeyrie.Config { return &consul.Config{} }}
}
