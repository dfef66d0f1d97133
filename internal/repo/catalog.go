package repo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// ErrProtected means an operation refused to delete a protected backup.
var ErrProtected = errors.New("backup is protected")

// ErrNoBackup means no backup has the given id.
var ErrNoBackup = errors.New("no such backup")

// Filter selects backups: every label and tag given must match, and Match,
// when set, must accept the backup.
type Filter struct {
	Labels map[string]string
	Tags   []string
	Match  func(*Backup) bool
}

func (f Filter) match(b *Backup) bool {
	if f.Match != nil && !f.Match(b) {
		return false
	}
	for k, v := range f.Labels {
		if got, ok := b.Labels[k]; !ok || got != v {
			return false
		}
	}
	for _, t := range f.Tags {
		found := false
		for _, bt := range b.Tags {
			found = found || bt == t
		}
		if !found {
			return false
		}
	}
	return true
}

// ListBackups returns the backups matching f, oldest first. A damaged record
// is not skipped silently: it fails the listing with an error naming it.
func (r *Repository) ListBackups(ctx context.Context, f Filter) ([]*Backup, error) {
	var ids []string
	err := r.be.List(ctx, "backups/", func(in backend.Info) error {
		ids = append(ids, strings.TrimPrefix(in.Name, "backups/"))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	var out []*Backup
	for _, id := range ids {
		b, err := r.LoadBackup(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("list backups: %w", err)
		}
		if f.match(b) {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// LatestWithLabels returns the newest backup whose label set equals labels
// exactly, or nil if there is none.
func (r *Repository) LatestWithLabels(ctx context.Context, labels map[string]string) (*Backup, error) {
	all, err := r.ListBackups(ctx, Filter{Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if len(all[i].Labels) == len(labels) && maps.Equal(all[i].Labels, labels) {
			return all[i], nil
		}
	}
	return nil, nil
}

// DeleteBackup removes a backup: the record first (then it no longer exists),
// then its manifests and its drill records. Protected backups are refused
// with ErrProtected. Chunks are freed by gc.
func (r *Repository) DeleteBackup(ctx context.Context, id string) error {
	b, err := r.LoadBackup(ctx, id)
	if backend.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", id, ErrNoBackup)
	}
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if b.Protected {
		return fmt.Errorf("delete %s: %w (unprotect it first)", id, ErrProtected)
	}
	if err := r.be.Delete(ctx, backupName(id)); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	if err := r.deleteManifests(ctx, id); err != nil {
		return err
	}
	return r.deleteDrills(ctx, id)
}

func (r *Repository) deleteManifests(ctx context.Context, backupID string) error {
	var names []string
	err := r.be.List(ctx, "manifests/"+backupID+"/", func(in backend.Info) error {
		names = append(names, in.Name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete manifests of %s: %w (gc removes them later)", backupID, err)
	}
	for _, n := range names {
		if err := r.be.Delete(ctx, n); err != nil && !backend.IsNotFound(err) {
			return fmt.Errorf("delete manifests of %s: %w (gc removes them later)", backupID, err)
		}
	}
	return nil
}

// UpdateBackup changes a backup's protection, expiry or tags in place (the
// record is rewritten atomically; its data is untouched).
func (r *Repository) UpdateBackup(ctx context.Context, id string, fn func(*Backup) error) (*Backup, error) {
	b, err := r.LoadBackup(ctx, id)
	if backend.IsNotFound(err) {
		return nil, fmt.Errorf("update %s: %w", id, ErrNoBackup)
	}
	if err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	disks := append([]DiskRef(nil), b.Disks...)
	if err := fn(b); err != nil {
		return nil, fmt.Errorf("update %s: %w", id, err)
	}
	b.ID, b.Schema, b.Disks = id, SchemaVersion, disks
	if err := r.saveJSON(ctx, backupName(id), "backup:"+id, b); err != nil {
		return nil, fmt.Errorf("update %s: %w", id, err)
	}
	return b, nil
}

// Retention says which backups prune keeps. Within each group of backups
// with the same label set, a backup is kept if any rule keeps it; protected
// backups are always kept; a backup past its expiry date is removed unless
// protected, whatever the rules say.
type Retention struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// IsZero reports whether no keep rule is set.
func (p Retention) IsZero() bool { return p == Retention{} }

// PruneDecision is prune's verdict on one backup.
type PruneDecision struct {
	Backup  *Backup  `json:"backup"`
	Keep    bool     `json:"keep"`
	Reasons []string `json:"reasons"`
}

// Prune applies the retention to the backups matching f, newest first in
// each label group, and deletes the rest unless dryRun. It returns every
// decision, so --dry-run shows what would go and why. A backup protected
// after the listing (DeleteBackup re-reads its record) is kept, its
// decision saying so.
func (r *Repository) Prune(ctx context.Context, f Filter, p Retention, now time.Time, dryRun bool) ([]PruneDecision, error) {
	all, err := r.ListBackups(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	decisions := Decide(all, p, now)
	if dryRun {
		return decisions, nil
	}
	if _, err := r.ApplyDecisions(ctx, decisions); err != nil {
		return decisions, fmt.Errorf("prune: %w", err)
	}
	return decisions, nil
}

// ApplyDecisions deletes the backups of the decisions that do not keep
// them, in order. A backup protected since the decisions were made
// (DeleteBackup re-reads its record) is kept, its decision changed to say
// so, and the others still go. It returns the ids it deleted, and stops at
// the first other error.
func (r *Repository) ApplyDecisions(ctx context.Context, decisions []PruneDecision) ([]string, error) {
	var removed []string
	for i, d := range decisions {
		if d.Keep {
			continue
		}
		err := r.DeleteBackup(ctx, d.Backup.ID)
		if errors.Is(err, ErrProtected) {
			decisions[i].Keep, decisions[i].Reasons = true, []string{"protected"}
			continue
		}
		if err != nil {
			return removed, err
		}
		removed = append(removed, d.Backup.ID)
	}
	return removed, nil
}

// Decide is prune's pure decision: for backups (any order) under retention p at
// time now. With no rule set, only expired backups go.
func Decide(backups []*Backup, p Retention, now time.Time) []PruneDecision {
	return DecideGrouped(backups, p, now, func(b *Backup) map[string]string { return b.Labels })
}

// DecideGrouped is Decide with the label set each backup is grouped by
// given by group (Decide groups by the record's own labels).
func DecideGrouped(backups []*Backup, p Retention, now time.Time, group func(*Backup) map[string]string) []PruneDecision {
	groups := map[string][]*Backup{}
	var keys []string
	for _, b := range backups {
		k := groupKey(group(b))
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], b)
	}
	sort.Strings(keys)
	var out []PruneDecision
	for _, k := range keys {
		g := groups[k]
		sort.Slice(g, func(i, j int) bool { return g[i].Created.After(g[j].Created) })
		reasons := make([][]string, len(g))
		rules := []struct {
			name string
			n    int
			key  func(time.Time) string
		}{
			{"last", p.Last, func(t time.Time) string { return t.Format(time.RFC3339Nano) }},
			{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15") }},
			{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
			{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
			{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
			{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
		}
		for _, rule := range rules {
			if rule.n <= 0 {
				continue
			}
			seen := map[string]bool{}
			for i, b := range g {
				if len(seen) >= rule.n {
					break
				}
				if b.Expires != nil && !b.Expires.After(now) {
					continue
				}
				key := rule.key(b.Created.UTC())
				if seen[key] {
					continue
				}
				seen[key] = true
				reasons[i] = append(reasons[i], fmt.Sprintf("%s %s", rule.name, key))
			}
		}
		for i, b := range g {
			d := PruneDecision{Backup: b}
			switch {
			case b.Protected:
				d.Keep, d.Reasons = true, []string{"protected"}
			case b.Expires != nil && !b.Expires.After(now):
				d.Reasons = []string{"expired " + b.Expires.UTC().Format(time.RFC3339)}
			case p.IsZero():
				d.Keep, d.Reasons = true, []string{"no retention rule"}
			case len(reasons[i]) > 0:
				d.Keep, d.Reasons = true, reasons[i]
			default:
				d.Reasons = []string{"not kept by any rule"}
			}
			out = append(out, d)
		}
	}
	return out
}

func groupKey(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "%q=%q,", k, labels[k])
	}
	return sb.String()
}
