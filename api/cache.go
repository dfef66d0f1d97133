package api

import (
	"crypto/sha256"
	"sync"
	"time"
)

// cache is a small map with a deadline per entry and a bound on its size:
// when full, expired entries go first, then arbitrary ones. Keys are
// SHA-256 sums, so that a token is never kept (nor visible in a dump).
type cache[V any] struct {
	mu  sync.Mutex
	max int
	m   map[[32]byte]cacheEntry[V]
}

type cacheEntry[V any] struct {
	v     V
	until time.Time
}

func newCache[V any](max int) *cache[V] {
	return &cache[V]{max: max, m: map[[32]byte]cacheEntry[V]{}}
}

func cacheKey(parts ...string) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

// get returns the value under k if it has not passed its deadline.
func (c *cache[V]) get(k [32]byte, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// put keeps v under k until the deadline.
func (c *cache[V]) put(k [32]byte, v V, until time.Time, now time.Time) {
	if c.max <= 0 || !now.Before(until) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for kk, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, kk)
			}
		}
		for kk := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, kk)
		}
	}
	c.m[k] = cacheEntry[V]{v: v, until: until}
}

func (c *cache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
