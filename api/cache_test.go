package api

import (
	"testing"
	"time"
)

// TestCacheBounded: the cache never holds more than its bound, drops
// expired entries first, and answers nothing past an entry's deadline.
func TestCacheBounded(t *testing.T) {
	now := time.Now()
	c := newCache[int](3)
	c.put(cacheKey("old"), 0, now.Add(time.Millisecond), now)
	for i := range 10 {
		c.put(cacheKey("token", string(rune('a'+i))), i, now.Add(time.Minute), now.Add(2*time.Millisecond))
		if n := c.len(); n > 3 {
			t.Fatalf("%d entries, bound 3", n)
		}
	}
	if _, ok := c.get(cacheKey("old"), now.Add(2*time.Millisecond)); ok {
		t.Error("an expired entry answered")
	}
	if v, ok := c.get(cacheKey("token", "j"), now.Add(time.Second)); !ok || v != 9 {
		t.Errorf("the newest entry: %v %v", v, ok)
	}
	if _, ok := c.get(cacheKey("token", "j"), now.Add(time.Minute)); ok {
		t.Error("an entry answered at its deadline")
	}
	c.put(cacheKey("past"), 1, now, now)
	if _, ok := c.get(cacheKey("past"), now); ok {
		t.Error("an entry put past its deadline answered")
	}
	if cacheKey("a", "bc") == cacheKey("ab", "c") {
		t.Error("cache keys of different parts collide")
	}
}
