package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/repo"
)

// Error types of repository maintenance.
const (
	// ErrGCRunning: another gc holds the repository's gc lease; the run is
	// skipped, not retried (the next scheduled run tries again).
	ErrGCRunning = "GCRunning"
	// ErrVerifyFailed: verify or check found damage; retrying finds it again.
	ErrVerifyFailed = "VerifyFailed"
)

// PruneExpiredInput names the repository whose expired backups go.
type PruneExpiredInput struct {
	Repository string `json:"repository"`
}

// PruneExpired removes every backup of the repository past its expiry date
// that is not protected, whatever workload it belongs to (also workloads
// whose policy is gone, which no backup run prunes any more). Keep rules are
// not applied here: they belong to each workload's own runs.
func (a *Activities) PruneExpired(ctx context.Context, in PruneExpiredInput) (*PruneResult, error) {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	out := &PruneResult{}
	err = heartbeatWhile(ctx, func() error {
		dec, err := r.Prune(ctx, repo.Filter{}, repo.Retention{}, time.Now(), false)
		for _, d := range dec {
			if !d.Keep {
				out.Removed = append(out.Removed, d.Backup.ID)
			}
		}
		return err
	})
	if err != nil {
		return out, fmt.Errorf("prune expired backups of %s: %w", in.Repository, err)
	}
	return out, nil
}

// GCInput is one gc run on a repository.
type GCInput struct {
	Repository string `json:"repository"`
	// Grace is repo.GCOptions.Grace (negative: the default, 1 h).
	Grace time.Duration `json:"grace"`
}

// CollectGarbage runs gc on the repository (repo.Repository.GC), heartbeating
// while it runs. While another gc holds the lease it fails with the
// non-retryable type ErrGCRunning.
func (a *Activities) CollectGarbage(ctx context.Context, in GCInput) (*repo.GCStats, error) {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	var st repo.GCStats
	err = heartbeatWhile(ctx, func() error {
		st, err = r.GC(ctx, repo.GCOptions{Grace: in.Grace})
		return err
	})
	if errors.Is(err, repo.ErrGCRunning) {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrGCRunning, err)
	}
	if err != nil {
		return nil, fmt.Errorf("gc of %s: %w", in.Repository, err)
	}
	return &st, nil
}

// VerifyInput is one verify run on a repository.
type VerifyInput struct {
	Repository string `json:"repository"`
	// Mode is "check" (structure: every record and manifest decodes, every
	// referenced chunk exists; no chunk data read) or "full" (every chunk of
	// every backup read, decrypted and re-hashed).
	Mode string `json:"mode"`
}

// VerifyResult is what verify found: counts and every damaged piece.
type VerifyResult struct {
	Mode   string             `json:"mode"`
	Check  *repo.CheckReport  `json:"check,omitempty"`
	Verify *repo.VerifyReport `json:"verify,omitempty"`
}

// VerifyRepository checks or verifies the repository. Damage fails the
// activity with the non-retryable type ErrVerifyFailed; its details carry
// the report, and its message names the bad chunks and backups.
func (a *Activities) VerifyRepository(ctx context.Context, in VerifyInput) (*VerifyResult, error) {
	if in.Mode != "check" && in.Mode != "full" {
		return nil, invalid("verify mode %q: want check or full", in.Mode)
	}
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	res := &VerifyResult{Mode: in.Mode}
	err = heartbeatWhile(ctx, func() error {
		if in.Mode == "check" {
			res.Check, err = r.Check(ctx)
			return err
		}
		res.Verify, err = r.Verify(ctx, nil, nil)
		return err
	})
	if errors.Is(err, repo.ErrVerifyFailed) || errors.Is(err, repo.ErrCheckFailed) {
		a.cfg.Metrics.VerifyFailed(in.Repository, in.Mode)
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s of %s: %v%s", in.Mode, in.Repository, err, damage(res)), ErrVerifyFailed, err, res)
	}
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", in.Mode, in.Repository, err)
	}
	return res, nil
}

// damage names the first few damaged pieces of a report.
func damage(res *VerifyResult) string {
	var items []string
	switch {
	case res.Verify != nil:
		for _, b := range res.Verify.BadChunks {
			items = append(items, fmt.Sprintf("chunk %s (backups %v)", b.ID, b.Backups()))
		}
		items = append(items, res.Verify.BadObjects...)
	case res.Check != nil:
		items = append(items, res.Check.MissingChunks...)
		items = append(items, res.Check.Errors...)
	}
	if len(items) == 0 {
		return ""
	}
	if len(items) > 5 {
		items = append(items[:5], fmt.Sprintf("and %d more", len(items)-5))
	}
	return fmt.Sprintf(": %v", items)
}
