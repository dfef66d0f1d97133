package repo

import "sync/atomic"

func addInt64(p *int64, n int64) { atomic.AddInt64(p, n) }
