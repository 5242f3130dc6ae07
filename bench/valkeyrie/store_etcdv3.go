//go:build etcdv3

package main

import (
	"context"
	"time"

	"github.com/kvtools/etcdv3"
	"github.com/kvtools/valkeyrie"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func init() {
	openers["etcdv3"] = opener{
		storeName: etcdv3.StoreName,
		config:    func(string) valkeyrie.Config { return &etcdv3.Config{} },
		settle:    settleEtcd,
	}
}

// settleEtcd leaves etcd's read buffer empty after the setup writes, as kv-bench does before
// each of its own read windows (crates/kv-bench/src/raw.rs, RawEtcd::settle): etcd 3.4 copies
// that buffer at its full capacity on every read. Wait out the pending 100 ms write batch,
// commit a write outside the key space (a lease granted and revoked), wait for that commit.
func settleEtcd(ctx context.Context, endpoint string) error {
	const batchInterval = 150 * time.Millisecond
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	time.Sleep(batchInterval)
	lease, err := c.Grant(ctx, 5)
	if err != nil {
		return err
	}
	if _, err := c.Revoke(ctx, lease.ID); err != nil {
		return err
	}
	time.Sleep(batchInterval)
	return nil
}
