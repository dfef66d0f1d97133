//go:build !cgo

package repo

// newEncoder returns the build's frame encoder: without cgo, klauspost's
// pure-Go one, for n concurrent calls.
func newEncoder(n int) (frameEncoder, error) {
	e, err := newGoEncoder(n)
	if err != nil {
		return nil, err
	}
	return e, nil
}
