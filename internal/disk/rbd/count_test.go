//go:build ceph

package rbd_test

import "sync/atomic"

func addCount(p *int64, n int) { atomic.AddInt64(p, int64(n)) }
