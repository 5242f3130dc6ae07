// Command valkeyrie-bench drives valkeyrie (github.com/kvtools/valkeyrie v1.0.0) for kv-bench:
// one operation, at one concurrency, for one duration, against one store, and prints one JSON
// object on stdout.
//
//	valkeyrie-bench -store redis -endpoint 127.0.0.1:26379 -op get -concurrency 64 -duration 2s
//
// valkeyrie's stores live in their own modules (github.com/kvtools/etcdv3, consul, zookeeper,
// redis, boltdb, dynamodb). Each is wired in by one file behind a build tag of its name
// (store_<name>.go), so the driver builds with whichever of them the Go module proxy serves:
// `go build -tags "etcdv3 redis"`. A store that is not compiled in answers
// {"error": "...", "unavailable": true} and kv-bench shows "n/a" for it.
//
// Ops: get put exists delete atomic_put atomic_put_contended list lock watch.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvtools/valkeyrie"
	"github.com/kvtools/valkeyrie/store"
)

// opener builds a valkeyrie config for an endpoint; filled by the store_<name>.go files.
type opener struct {
	storeName string
	config    func(endpoint string) valkeyrie.Config
	// open, when set, opens the store instead of valkeyrie.NewStore (a store whose registered
	// constructor is not the configuration its own tests use).
	open func(ctx context.Context, endpoint string) (store.Store, error)
	// prepare, when set, makes what the store expects to exist (a table) before it is opened.
	prepare func(ctx context.Context, endpoint string) error
	// settle, when set, runs after the setup writes of an op that only reads, so that the
	// measured reads find the server as kv-bench's other sides do (see store_etcdv3.go).
	settle func(ctx context.Context, endpoint string) error
}

func (o opener) connect(ctx context.Context, endpoint string) (store.Store, error) {
	if o.open != nil {
		return o.open(ctx, endpoint)
	}
	return valkeyrie.NewStore(ctx, o.storeName, []string{endpoint}, o.config(endpoint))
}

var openers = map[string]opener{}

type result struct {
	Store       string  `json:"store"`
	Op          string  `json:"op"`
	Concurrency int     `json:"concurrency"`
	Ops         int64   `json:"ops"`
	Errors      int64   `json:"errors"`
	Seconds     float64 `json:"seconds"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50Us       float64 `json:"p50_us"`
	P99Us       float64 `json:"p99_us"`
	FirstError  string  `json:"first_error,omitempty"`
	Error       string  `json:"error,omitempty"`
	Unavailable bool    `json:"unavailable,omitempty"`
}

func fail(r result, err error, unavailable bool) {
	r.Error = err.Error()
	r.Unavailable = unavailable
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

func main() {
	storeFlag := flag.String("store", "redis", "etcdv3|consul|zookeeper|redis|boltdb|dynamodb")
	endpoint := flag.String("endpoint", "127.0.0.1:6379", "server address (or file path for boltdb)")
	op := flag.String("op", "get", "operation")
	concurrency := flag.Int("concurrency", 1, "concurrent workers on one shared store handle")
	duration := flag.Duration("duration", 2*time.Second, "measured time")
	maxOps := flag.Int64("max-ops", 0, "stop after this many operations (0: no limit)")
	prefix := flag.String("prefix", "kvbench-go", "key prefix")
	listKeys := flag.Int("list-keys", 1000, "list: keys in the listed directory")
	namespaceKeys := flag.Int("namespace-keys", 10000, "list: keys in the whole namespace (listed ones included)")
	flag.Parse()

	r := result{Store: *storeFlag, Op: *op, Concurrency: *concurrency}
	o, ok := openers[*storeFlag]
	if !ok {
		compiled := make([]string, 0, len(openers))
		for k := range openers {
			compiled = append(compiled, k)
		}
		sort.Strings(compiled)
		fail(r, fmt.Errorf("store %q not compiled in (its module could not be built: see scripts/bench); compiled in: [%s]",
			*storeFlag, strings.Join(compiled, " ")), true)
	}
	ctx := context.Background()
	if o.prepare != nil {
		if err := o.prepare(ctx, *endpoint); err != nil {
			fail(r, err, false)
		}
	}
	kv, err := o.connect(ctx, *endpoint)
	if err != nil {
		fail(r, err, false)
	}
	defer kv.Close()

	base := fmt.Sprintf("%s/%d", *prefix, time.Now().UnixNano())
	value := []byte(strings.Repeat("v", 64))
	key := func(w int, i int64) string { return fmt.Sprintf("%s/k%d-%d", base, w, i%100) }

	// Setup shared by the ops.
	switch *op {
	case "get", "exists":
		for w := 0; w < *concurrency; w++ {
			for i := int64(0); i < 100; i++ {
				if err := kv.Put(ctx, key(w, i), value, nil); err != nil {
					fail(r, err, false)
				}
			}
		}
	case "list":
		for i := 0; i < *namespaceKeys; i++ {
			dir := "other"
			if i < *listKeys {
				dir = "listed"
			}
			if err := kv.Put(ctx, fmt.Sprintf("%s/%s/k%05d", base, dir, i), value, nil); err != nil {
				fail(r, err, false)
			}
		}
	case "atomic_put_contended":
		if _, _, err := kv.AtomicPut(ctx, base+"/hot", value, nil, nil); err != nil {
			fail(r, err, false)
		}
	case "atomic_put", "lock":
		// The parent directory exists before the workers start: valkeyrie's ZooKeeper store
		// fails ("node already exists") when concurrent first writes create it together, a
		// start-up race the measured steady state should not include.
		if err := kv.Put(ctx, base+"/setup", value, nil); err != nil {
			fail(r, err, false)
		}
	}

	if o.settle != nil && (*op == "get" || *op == "exists" || *op == "list") {
		if err := o.settle(ctx, *endpoint); err != nil {
			fail(r, err, false)
		}
	}

	if *op == "lock" {
		// A store without locks says so on NewLock: report the op as not available there,
		// rather than as a run of failures.
		if _, err := kv.NewLock(ctx, base+"/probe", nil); errors.Is(err, store.ErrCallNotSupported) {
			fail(r, err, true)
		}
	}

	var watchCh <-chan *store.KVPair
	if *op == "watch" {
		*concurrency = 1
		r.Concurrency = 1
		if err := kv.Put(ctx, base+"/watched", value, nil); err != nil {
			fail(r, err, false)
		}
		watcher, err := o.connect(ctx, *endpoint)
		if err != nil {
			fail(r, err, false)
		}
		defer watcher.Close()
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		watchCh, err = watcher.Watch(wctx, base+"/watched", nil)
		if err != nil {
			fail(r, err, true)
		}
		<-watchCh // the current state
	}

	var ops, errs atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, *concurrency)
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var prev *store.KVPair
			for i := int64(0); time.Now().Before(deadline); i++ {
				if *maxOps > 0 && ops.Load()+errs.Load() >= *maxOps {
					return
				}
				t := time.Now()
				var err error
				switch *op {
				case "get":
					_, err = kv.Get(ctx, key(w, i), nil)
				case "exists":
					_, err = kv.Exists(ctx, key(w, i), nil)
				case "put":
					err = kv.Put(ctx, key(w, i), value, nil)
				case "delete":
					k := key(w, i)
					if err = kv.Put(ctx, k, value, nil); err == nil {
						t = time.Now()
						err = kv.Delete(ctx, k)
					}
				case "atomic_put":
					var p *store.KVPair
					_, p, err = kv.AtomicPut(ctx, fmt.Sprintf("%s/cas%d", base, w), value, prev, nil)
					if err == nil {
						prev = p
					}
				case "atomic_put_contended":
					var cur *store.KVPair
					if cur, err = kv.Get(ctx, base+"/hot", nil); err == nil {
						_, _, err = kv.AtomicPut(ctx, base+"/hot", value, cur, nil)
						if errors.Is(err, store.ErrKeyModified) {
							err = nil // a lost race is a completed attempt
						}
					}
				case "list":
					_, err = kv.List(ctx, base+"/listed", nil)
				case "lock":
					var l store.Locker
					if l, err = kv.NewLock(ctx, fmt.Sprintf("%s/lock%d", base, w), nil); err == nil {
						if _, err = l.Lock(ctx); err == nil {
							err = l.Unlock(ctx)
						}
					}
				case "watch":
					if err = kv.Put(ctx, base+"/watched", []byte(fmt.Sprint(i)), nil); err == nil {
						select {
						case <-watchCh:
						case <-time.After(5 * time.Second):
							err = errors.New("watch: no event within 5 s")
						}
					}
				default:
					fail(r, fmt.Errorf("unknown op %q", *op), true)
				}
				if err != nil {
					if errs.Add(1) == 1 {
						firstErr.Store(err.Error())
					}
					continue
				}
				ops.Add(1)
				lat[w] = append(lat[w], time.Since(t))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Nanoseconds()) / 1000
	}
	r.Ops, r.Errors, r.Seconds = ops.Load(), errs.Load(), elapsed
	r.OpsPerSec = float64(r.Ops) / elapsed
	r.P50Us, r.P99Us = pct(0.50), pct(0.99)
	if v := firstErr.Load(); v != nil {
		r.FirstError = v.(string)
	}
	_ = kv.DeleteTree(ctx, base)
	_ = json.NewEncoder(os.Stdout).Encode(r)
}
