package lab

import (
	"testing"

	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
)

// TestMain lets the RBD tests share one throwaway Ceph cluster, started by
// the first cephlab.Require and stopped when the tests end.
func TestMain(m *testing.M) { cephlab.Main(m) }
