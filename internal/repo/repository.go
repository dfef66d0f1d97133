// Package repo is Raksha's backup repository: a content-addressed,
// deduplicated, compressed and encrypted store of disk images over any
// backend.Backend (local directory, S3, Swift).
//
// Objects in the backend:
//
//	config                              plaintext JSON: format, chunk size, compression, encryption
//	config.sealed                       the same config sealed with the master key (encrypted
//	                                    repositories): Open refuses a config that differs from it
//	keys/ID                             the master key wrapped by an argon2id-derived key
//	chunks/XX/ID                        one chunk of disk data (XX = first byte of ID in hex)
//	trash/XX/ID                         a chunk gc found unreferenced, kept until it is safe to purge
//	manifests/BACKUP/VM/DISK/header     a disk manifest: size, chunk size, checkpoint, base, stats
//	manifests/BACKUP/VM/DISK/page-N     the chunk list, PageEntries ids a page
//	backups/BACKUP                      the backup record; a backup exists only once it is written
//	sessions/BACKUP                     a marker of a backup in progress (its ModTime is its start)
//	drills/BACKUP/ID                    the record of one restore drill of the backup (never
//	                                    part of the backup record, which a drill does not change)
//	gc/last                             written at the start of every gc run
//
// A backup commits in this order: chunks, disk manifests, backup record. The
// record is written last, so a crash never leaves a record that points at
// missing data. Every object but config and keys is sealed by the codec
// (encrypted and authenticated, or checksummed).
package repo

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

const (
	// FormatVersion is the repository format this code writes and reads.
	FormatVersion = 1
	// DefaultChunkSize is the chunk size of a new repository unless set.
	DefaultChunkSize = 4 << 20
	// MinChunkSize and MaxChunkSize bound the chunk size at init.
	MinChunkSize = 64 << 10
	MaxChunkSize = 64 << 20
)

// Config is the repository's plaintext configuration object. It holds no secret.
type Config struct {
	Version     int       `json:"version"`
	ID          string    `json:"id"`
	ChunkSize   int       `json:"chunk_size"`
	Compression string    `json:"compression"` // "zstd" or "none"
	Encryption  string    `json:"encryption"`  // "aes-256-gcm" or "none"
	ChunkIDHash string    `json:"chunk_id_hash"`
	Created     time.Time `json:"created"`
}

// InitOptions configure a new repository.
type InitOptions struct {
	ChunkSize   int    // 0: DefaultChunkSize; a power of two between MinChunkSize and MaxChunkSize
	Compression string // "", "zstd" or "none"
	// NoEncryption stores data unencrypted (chunk ids become plain SHA-256).
	NoEncryption bool
	// Password protects the master key; required unless NoEncryption.
	Password string
	// KDF overrides the argon2id cost (tests use a cheap one); zero: default.
	KDF KDFParams
}

// Options tune an opened repository. The zero value is good for production.
type Options struct {
	// Workers hash, compress and encrypt chunks (default: number of CPUs).
	Workers int
	// Transfers is how many uploads or downloads run at once (default 8).
	Transfers int
	// Log receives structured logs (default slog.Default()).
	Log *slog.Logger
	// MaxSessionAge bounds how long a backup may run; older session markers
	// are considered dead by gc and such a backup refuses to commit (default 48h).
	MaxSessionAge time.Duration
	// KDF is the argon2id cost for keys added through this handle.
	KDF KDFParams
	// RequireEncryption makes Open refuse an unencrypted repository (a
	// registry entry pinned to `encryption: required`). Open refuses one
	// anyway when it is given a password.
	RequireEncryption bool
}

// Repository is an open repository. It is safe for concurrent use.
type Repository struct {
	be     backend.Backend
	cfg    Config
	codec  *codec
	hasher *hasher
	opts   Options
	log    *slog.Logger
	mk     *masterKey // nil when unencrypted
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Transfers <= 0 {
		o.Transfers = 8
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxSessionAge <= 0 {
		o.MaxSessionAge = 48 * time.Hour
	}
	if o.KDF == (KDFParams{}) {
		o.KDF = defaultKDF
	}
	return o
}

// ErrNotInitialized means the backend holds no repository config.
var ErrNotInitialized = errors.New("no repository here (run 'raksha repo init')")

// ErrDowngrade means Open found an unencrypted repository where an
// encrypted one was expected (a password was given, or encryption is
// required): whoever can write the bucket can set `encryption: none` in the
// plaintext config, and new backups would then be stored in plaintext.
var ErrDowngrade = errors.New("the repository is not encrypted, but encryption is expected")

// sealedConfigName is the authenticated copy of the config.
const sealedConfigName = "config.sealed"

// ErrAlreadyInitialized means Init found an existing repository.
var ErrAlreadyInitialized = errors.New("a repository already exists here")

// Init creates a repository in an empty backend and returns it opened.
func Init(ctx context.Context, be backend.Backend, io InitOptions, opts Options) (*Repository, error) {
	opts = opts.withDefaults()
	if _, err := be.Stat(ctx, "config"); err == nil {
		return nil, fmt.Errorf("init %s: %w", be.Location(), ErrAlreadyInitialized)
	} else if !backend.IsNotFound(err) {
		return nil, fmt.Errorf("init %s: %w", be.Location(), err)
	}
	cs := io.ChunkSize
	if cs == 0 {
		cs = DefaultChunkSize
	}
	if cs < MinChunkSize || cs > MaxChunkSize || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("init: chunk size %d must be a power of two between %d KiB and %d MiB", cs, MinChunkSize>>10, MaxChunkSize>>20)
	}
	comp := io.Compression
	if comp == "" {
		comp = "zstd"
	}
	if comp != "zstd" && comp != "none" {
		return nil, fmt.Errorf("init: compression %q: use zstd or none", comp)
	}
	cfg := Config{Version: FormatVersion, ID: hex.EncodeToString(randomBytes(16)), ChunkSize: cs,
		Compression: comp, Encryption: "aes-256-gcm", ChunkIDHash: "hmac-sha256", Created: time.Now().UTC()}
	var mk *masterKey
	if io.NoEncryption {
		cfg.Encryption, cfg.ChunkIDHash = "none", "sha256"
	} else {
		if io.Password == "" {
			return nil, fmt.Errorf("init: a password is required for an encrypted repository (RAKSHA_PASSWORD or --password-file)")
		}
		mk = newMasterKey()
		kdf := io.KDF
		if kdf == (KDFParams{}) {
			kdf = opts.KDF
		}
		kf, err := wrapKey(mk, io.Password, kdf)
		if err != nil {
			return nil, fmt.Errorf("init: wrap key: %w", err)
		}
		if err := be.Save(ctx, "keys/"+hex.EncodeToString(randomBytes(8)), kf); err != nil {
			return nil, fmt.Errorf("init: save key: %w", err)
		}
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := be.Save(ctx, "config", data); err != nil {
		return nil, fmt.Errorf("init: save config: %w", err)
	}
	c, err := newCodec(mk != nil, cfg.Compression == "zstd", max(cfg.ChunkSize, 64<<20), opts.Workers)
	if err != nil {
		return nil, err
	}
	r, err := newRepository(be, cfg, mk, c, opts)
	if err != nil {
		return nil, err
	}
	if mk != nil {
		if err := r.saveJSON(ctx, sealedConfigName, sealedConfigName, cfg); err != nil {
			return nil, fmt.Errorf("init: %w", err)
		}
	}
	return r, nil
}

// Open opens the repository in be with password (ignored when unencrypted).
func Open(ctx context.Context, be backend.Backend, password string, opts Options) (*Repository, error) {
	opts = opts.withDefaults()
	data, err := be.Load(ctx, "config")
	if backend.IsNotFound(err) {
		return nil, fmt.Errorf("open %s: %w", be.Location(), ErrNotInitialized)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: load config: %w", be.Location(), err)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("open %s: config: %w: %v", be.Location(), ErrCorrupt, err)
	}
	if cfg.Version != FormatVersion {
		return nil, fmt.Errorf("open %s: repository format %d, this raksha reads %d", be.Location(), cfg.Version, FormatVersion)
	}
	if cfg.ChunkSize < MinChunkSize || cfg.ChunkSize > MaxChunkSize || (cfg.Compression != "zstd" && cfg.Compression != "none") {
		return nil, fmt.Errorf("open %s: config: %w: chunk size %d, compression %q", be.Location(), ErrCorrupt, cfg.ChunkSize, cfg.Compression)
	}
	switch cfg.Encryption {
	case "none":
		if password != "" || opts.RequireEncryption {
			why := "a password was given"
			if password == "" {
				why = "the registry requires encryption"
			}
			return nil, fmt.Errorf("open %s: config says encryption %q, but %s: %w; refusing to read or write it (if the config was altered, restore it from a copy)",
				be.Location(), cfg.Encryption, why, ErrDowngrade)
		}
	case "aes-256-gcm":
		if cfg.ChunkIDHash != "hmac-sha256" {
			return nil, fmt.Errorf("open %s: config: %w: chunk id hash %q with encryption %q", be.Location(), ErrCorrupt, cfg.ChunkIDHash, cfg.Encryption)
		}
		if password == "" {
			return nil, fmt.Errorf("open %s: the repository is encrypted: set RAKSHA_PASSWORD or --password-file", be.Location())
		}
	default:
		return nil, fmt.Errorf("open %s: config: unknown encryption %q", be.Location(), cfg.Encryption)
	}
	c, err := newCodec(cfg.Encryption != "none", cfg.Compression == "zstd", max(cfg.ChunkSize, 64<<20), opts.Workers)
	if err != nil {
		return nil, err
	}
	var mk *masterKey
	if cfg.Encryption != "none" {
		kdfStart := time.Now()
		mk, err = findKey(ctx, be, password)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", be.Location(), err)
		}
		opts.Log.DebugContext(ctx, "master key unwrapped", "took", time.Since(kdfStart).Round(10*time.Microsecond))
	}
	r, err := newRepository(be, cfg, mk, c, opts)
	if err != nil {
		return nil, err
	}
	if mk != nil {
		if err := r.checkSealedConfig(ctx); err != nil {
			return nil, fmt.Errorf("open %s: %w", be.Location(), err)
		}
	}
	return r, nil
}

// checkSealedConfig compares the plaintext config with its sealed copy,
// which only a holder of the master key can write: any difference is an
// altered config. A repository made before the copy existed gets it now.
func (r *Repository) checkSealedConfig(ctx context.Context) error {
	var sealed Config
	err := r.loadJSON(ctx, sealedConfigName, sealedConfigName, &sealed)
	if errors.Is(err, backend.ErrNotFound) {
		r.log.InfoContext(ctx, "sealing the repository config (a repository from before sealed configs)", "repository", r.be.Location())
		return r.saveJSON(ctx, sealedConfigName, sealedConfigName, r.cfg)
	}
	if err != nil {
		return fmt.Errorf("config's sealed copy: %w", err)
	}
	if !sealed.Created.Equal(r.cfg.Created) {
		return fmt.Errorf("config: %w: created %v, its sealed copy %v: the config was altered", ErrCorrupt, r.cfg.Created, sealed.Created)
	}
	sealed.Created = r.cfg.Created
	if sealed != r.cfg {
		return fmt.Errorf("config: %w: %+v differs from its sealed copy %+v: the config was altered", ErrCorrupt, r.cfg, sealed)
	}
	return nil
}

func findKey(ctx context.Context, be backend.Backend, password string) (*masterKey, error) {
	var names []string
	err := be.List(ctx, "keys/", func(in backend.Info) error {
		names = append(names, in.Name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no key in keys/: %w", ErrCorrupt)
	}
	var firstErr error
	for _, n := range names {
		data, err := be.Load(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", n, err)
		}
		mk, err := unwrapKey(data, password)
		if err == nil {
			return mk, nil
		}
		if !errors.Is(err, ErrWrongPassword) && firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", n, err)
		}
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%w (and %v)", ErrWrongPassword, firstErr)
	}
	return nil, ErrWrongPassword
}

// newRepository returns the repository with codec c, giving c its cipher
// when the repository is encrypted (mk not nil).
func newRepository(be backend.Backend, cfg Config, mk *masterKey, c *codec, opts Options) (*Repository, error) {
	r := &Repository{be: be, cfg: cfg, opts: opts, log: opts.Log, mk: mk, codec: c}
	var idKey []byte
	if mk != nil {
		aead, err := newGCM(mk.Encrypt)
		if err != nil {
			return nil, err
		}
		c.aead = aead
		idKey = mk.ID
	}
	r.hasher = newHasher(idKey)
	return r, nil
}

// Config returns the repository's configuration.
func (r *Repository) Config() Config { return r.cfg }

// Backend returns the backend the repository lives in.
func (r *Repository) Backend() backend.Backend { return r.be }

// Location names the repository for messages; it holds no secret.
func (r *Repository) Location() string { return r.be.Location() }

// AddKey adds another password that opens the repository.
func (r *Repository) AddKey(ctx context.Context, password string) error {
	if r.mk == nil {
		return fmt.Errorf("add key: the repository is not encrypted")
	}
	if password == "" {
		return fmt.Errorf("add key: empty password")
	}
	kf, err := wrapKey(r.mk, password, r.opts.KDF)
	if err != nil {
		return err
	}
	return r.be.Save(ctx, "keys/"+hex.EncodeToString(randomBytes(8)), kf)
}

func chunkName(id ChunkID) string {
	h := id.String()
	return "chunks/" + h[:2] + "/" + h
}

func trashName(id ChunkID) string {
	h := id.String()
	return "trash/" + h[:2] + "/" + h
}

// chunkFromName parses the id of a chunks/ or trash/ object name.
func chunkFromName(name string) (ChunkID, bool) {
	i := strings.LastIndexByte(name, '/')
	id, err := ParseChunkID(name[i+1:])
	return id, err == nil
}

func chunkAAD(id ChunkID) []byte { return append([]byte("chunk:"), id[:]...) }

// sealJSON encodes v as a sealed object.
func (r *Repository) saveJSON(ctx context.Context, name, aad string, v any) error {
	plain, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	if err := r.be.Save(ctx, name, r.codec.seal(plain, []byte(aad), nil)); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	return nil
}

// loadJSON loads a sealed object into v; damaged objects give ErrCorrupt
// naming the object.
func (r *Repository) loadJSON(ctx context.Context, name, aad string, v any) error {
	data, err := r.be.Load(ctx, name)
	if err != nil {
		return fmt.Errorf("load %s: %w", name, err)
	}
	plain, err := r.codec.open(data, []byte(aad))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
	}
	return nil
}
