package api

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
)

// Registry opens the repositories of a registry (worker.yaml's
// `repositories`: id → URL, password file, S3 endpoint, encryption) as
// the workers do, once each. It is safe for concurrent use.
type Registry struct {
	entries map[string]activities.RepoConfig
	log     *slog.Logger

	mu    sync.Mutex
	repos map[string]*repo.Repository
}

// NewRegistry returns a Registry of the entries.
func NewRegistry(entries map[string]activities.RepoConfig, log *slog.Logger) *Registry {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{entries: entries, log: log, repos: map[string]*repo.Repository{}}
}

// Open returns the repository of the id, opening it on first use; an id
// not in the registry wraps ErrUnknownRepository.
func (g *Registry) Open(ctx context.Context, id string) (*repo.Repository, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.repos[id]; ok {
		return r, nil
	}
	rc, ok := g.entries[id]
	if !ok {
		return nil, fmt.Errorf("repository %q: %w", id, ErrUnknownRepository)
	}
	if rc.Encryption != "" && rc.Encryption != "required" {
		return nil, fmt.Errorf("repository %q: encryption %q: the only setting is required", id, rc.Encryption)
	}
	pw := ""
	if rc.PasswordFile != "" {
		data, err := os.ReadFile(rc.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("repository %q: password file: %w", id, err)
		}
		pw = strings.TrimRight(string(data), "\r\n")
	}
	be, err := open.Open(ctx, rc.URL, open.Options{S3Endpoint: rc.S3Endpoint, S3PathStyle: true, Log: g.log})
	if err != nil {
		return nil, fmt.Errorf("repository %q: %w", id, err)
	}
	r, err := repo.Open(ctx, be, pw, repo.Options{Log: g.log, RequireEncryption: rc.Encryption == "required"})
	if err != nil {
		return nil, fmt.Errorf("repository %q: %w", id, err)
	}
	g.repos[id] = r
	return r, nil
}
