package repo

// bufList is a free list of byte buffers of one size. Unlike sync.Pool it
// keeps its buffers across garbage collections, so a backup reuses the same
// few chunk buffers from its first chunk to its last instead of allocating
// new ones after every collection (on memory fresh from the kernel each 4 KiB
// page of a new buffer costs a page fault, which on a virtual machine costs
// about as much as hashing the page). It holds at most the capacity given to
// newBufList; buffers put beyond that are left to the garbage collector.
type bufList struct {
	free  chan *[]byte
	alloc func() []byte
}

// newBufList returns a list that keeps up to keep buffers made by alloc.
func newBufList(keep int, alloc func() []byte) *bufList {
	return &bufList{free: make(chan *[]byte, max(keep, 1)), alloc: alloc}
}

// get returns a free buffer, or a new one.
func (l *bufList) get() *[]byte {
	select {
	case b := <-l.free:
		return b
	default:
		b := l.alloc()
		return &b
	}
}

// put returns b to the list.
func (l *bufList) put(b *[]byte) {
	select {
	case l.free <- b:
	default:
	}
}
