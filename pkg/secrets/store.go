package secrets

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/textproto"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// File names inside the state directory.
const (
	StoreFile = "secrets.enc"
	KeyFile   = "secrets.key"
	lockFile  = "secrets.lock"
)

// OpaqueDisplay is how an opaque value is shown everywhere.
const OpaqueDisplay = "<opaque>"

// ErrNotFound is wrapped by every "no such secret" error.
var ErrNotFound = errors.New("secret not found")

// ErrWrongKey is wrapped when the store was encrypted with another key.
var ErrWrongKey = errors.New("secret store key does not match")

// storeMagic starts the store file; it is also the AEAD additional data.
var storeMagic = []byte("sluice-secrets-v1\n")

const keyCheckLen = 8

// Scope is where a named secret lives: Global ("") or one sandbox.
type Scope string

// Global is the scope every sandbox falls back to.
const Global Scope = ""

// SandboxScope returns the scope of one sandbox ("" gives Global).
func SandboxScope(sandbox string) Scope { return Scope(sandbox) }

// Sandbox returns the sandbox name of the scope, "" for Global.
func (s Scope) Sandbox() string { return string(s) }

// String is "global" or "sandbox:NAME".
func (s Scope) String() string {
	if s == Global {
		return "global"
	}
	return "sandbox:" + string(s)
}

// Entry describes one stored secret. It never carries the value.
type Entry struct {
	Name    string    `json:"name"`
	Scope   Scope     `json:"-"`
	Updated time.Time `json:"updated"`
}

// MarshalJSON writes {"name","scope","sandbox","updated"} with scope
// "global" or "sandbox".
func (e Entry) MarshalJSON() ([]byte, error) {
	kind := "global"
	if e.Scope != Global {
		kind = "sandbox"
	}
	return json.Marshal(struct {
		Name    string    `json:"name"`
		Scope   string    `json:"scope"`
		Sandbox string    `json:"sandbox,omitempty"`
		Updated time.Time `json:"updated"`
	}{e.Name, kind, e.Scope.Sandbox(), e.Updated.UTC()})
}

// KeySource says where the store's 32-byte AES key comes from. With File and
// Env both empty the key is the file KeyFile in the state directory, created
// 0600 on first use. A key file holds the key base64-encoded (standard
// encoding, surrounding whitespace ignored) or as 32 raw bytes; an env
// variable holds it base64-encoded.
type KeySource struct {
	File string
	Env  string
	// Getenv reads Env; nil means os.Getenv.
	Getenv func(string) string
}

// Store is the encrypted secret store of a state directory. Values are kept
// in one AES-256-GCM sealed file; every write replaces it atomically. Safe for
// concurrent use, and by several processes (writes take a file lock).
type Store struct {
	dir  string
	path string // the store file
	aead cipher.AEAD
	chk  []byte
	log  *slog.Logger

	mu    sync.Mutex
	data  *storeData
	stamp fileStamp
}

type fileStamp struct {
	ok    bool
	nonce string
}

type storeData struct {
	Secrets []storedSecret `json:"secrets"`
	Opaque  []storedOpaque `json:"opaque"`
}

type storedSecret struct {
	Scope   string    `json:"scope"`
	Name    string    `json:"name"`
	Value   string    `json:"value"`
	Updated time.Time `json:"updated"`
}

type storedOpaque struct {
	Sandbox string    `json:"sandbox"`
	Rule    string    `json:"rule"`
	Header  string    `json:"header"`
	Value   string    `json:"value"`
	Updated time.Time `json:"updated"`
}

// OpenStore opens (without creating) the store in dir, taking the key from
// ks. The directory is created 0700 and the key file 0600 when missing; the
// store file appears with the first Set. log must not be nil.
func OpenStore(dir string, ks KeySource, log *slog.Logger) (*Store, error) {
	if dir == "" {
		return nil, errors.New("opening secret store: empty state directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening secret store: %w", err)
	}
	key, err := loadKey(dir, ks)
	if err != nil {
		return nil, err
	}
	s, err := newStore(key, log)
	if err != nil {
		return nil, err
	}
	s.dir = dir
	s.path = filepath.Join(dir, StoreFile)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// StoreExists reports whether dir holds a store file, so that read-only
// users (`sluice secret list`, `sluice run`) can avoid creating a key.
func StoreExists(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, StoreFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("secret store: %w", err)
	}
	return true, nil
}

func newStore(key []byte, log *slog.Logger) (*Store, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secret store key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secret store key: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("sluice secret store key check"))
	return &Store{aead: aead, chk: m.Sum(nil)[:keyCheckLen], log: log, data: &storeData{}}, nil
}

func loadKey(dir string, ks KeySource) ([]byte, error) {
	switch {
	case ks.File != "" && ks.Env != "":
		return nil, errors.New("secret store key: set a key file or a key env variable, not both")
	case ks.Env != "":
		getenv := ks.Getenv
		if getenv == nil {
			getenv = os.Getenv
		}
		v := strings.TrimSpace(getenv(ks.Env))
		if v == "" {
			return nil, fmt.Errorf("secret store key: environment variable %s is empty or unset", ks.Env)
		}
		key, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("secret store key: environment variable %s must hold 32 bytes, base64-encoded (e.g. `head -c32 /dev/urandom | base64`)", ks.Env)
		}
		return key, nil
	case ks.File != "":
		return readKeyFile(ks.File)
	}
	path := filepath.Join(dir, KeyFile)
	key, err := readKeyFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	// A store without its key cannot be read: never create a new key over
	// it (that would only hide the loss).
	if _, err := os.Stat(filepath.Join(dir, StoreFile)); err == nil {
		return nil, fmt.Errorf("secret store key %s is missing but the store %s exists: restore the key file (or configure the key source it was created with); a new key cannot read the existing secrets", path, filepath.Join(dir, StoreFile))
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating secret store key: %w", err)
	}
	enc := []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	if err := createExclusive(path, enc); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process won the race
			return readKeyFile(path)
		}
		return nil, fmt.Errorf("creating secret store key: %w", err)
	}
	return key, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading secret store key: %w", err)
	}
	defer f.Close()
	if err := checkPrivate(f, path); err != nil {
		return nil, fmt.Errorf("reading secret store key: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("reading secret store key %s: %w", path, err)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 {
		if key, err := base64.StdEncoding.DecodeString(string(t)); err == nil && len(key) == 32 {
			return key, nil
		}
	}
	if len(b) == 32 {
		return b, nil
	}
	return nil, fmt.Errorf("reading secret store key %s: must hold 32 bytes, raw or base64-encoded", path)
}

// checkPrivate refuses a file that group or others may access.
func checkPrivate(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o; it must not be accessible by group or others: run `chmod 600 %s`", path, perm, path)
	}
	return nil
}

// createExclusive writes data to path (0600) only if path does not exist,
// so that a reader never sees a partial file.
func createExclusive(path string, data []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), filepath.Base(path), data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// writeFileAtomic replaces path with data (0600) via temp file + rename.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), filepath.Base(path), data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func writeTemp(dir, base string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", err
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// Path returns the store file.
func (s *Store) Path() string { return s.path }

// refreshLocked reloads the file when another process replaced it. Every
// write uses a fresh random nonce, so the nonce in the header identifies the
// file's content without reading all of it.
func (s *Store) refreshLocked() error {
	if s.path == "" {
		return nil
	}
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		s.data, s.stamp = &storeData{}, fileStamp{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading secret store: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, len(storeMagic)+keyCheckLen+s.aead.NonceSize())
	if _, err := io.ReadFull(f, hdr); err != nil {
		return fmt.Errorf("reading secret store %s: not a sluice secret store (short file)", s.path)
	}
	st := fileStamp{ok: true, nonce: string(hdr[len(storeMagic)+keyCheckLen:])}
	if st == s.stamp {
		return nil
	}
	rest, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("reading secret store: %w", err)
	}
	d, err := s.decrypt(append(hdr, rest...))
	if err != nil {
		return err
	}
	s.data, s.stamp = d, st
	return nil
}

func (s *Store) decrypt(raw []byte) (*storeData, error) {
	ns := s.aead.NonceSize()
	if len(raw) < len(storeMagic)+keyCheckLen+ns || !bytes.Equal(raw[:len(storeMagic)], storeMagic) {
		return nil, fmt.Errorf("reading secret store %s: not a sluice secret store (bad header)", s.path)
	}
	rest := raw[len(storeMagic):]
	if !hmac.Equal(rest[:keyCheckLen], s.chk) {
		return nil, fmt.Errorf("reading secret store %s: %w: it was encrypted with another key (check the key file or key source)", s.path, ErrWrongKey)
	}
	rest = rest[keyCheckLen:]
	plain, err := s.aead.Open(nil, rest[:ns], rest[ns:], storeMagic)
	if err != nil {
		return nil, fmt.Errorf("reading secret store %s: decryption failed: the file is corrupted or was encrypted with another key", s.path)
	}
	var d storeData
	if err := json.Unmarshal(plain, &d); err != nil {
		return nil, fmt.Errorf("reading secret store %s: malformed content", s.path)
	}
	return &d, nil
}

func (s *Store) encrypt(d *storeData) ([]byte, error) {
	plain, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encoding secret store: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("encrypting secret store: %w", err)
	}
	out := append([]byte{}, storeMagic...)
	out = append(out, s.chk...)
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, plain, storeMagic), nil
}

// update runs fn on a fresh copy of the data under the file lock and writes
// the result back.
func (s *Store) update(fn func(d *storeData) error) error {
	if s.path != "" {
		lf, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("locking secret store: %w", err)
		}
		defer lf.Close()
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
			return fmt.Errorf("locking secret store: %w", err)
		}
		defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stamp = fileStamp{} // force a reload under the lock
	if err := s.refreshLocked(); err != nil {
		return err
	}
	d := cloneData(s.data)
	if err := fn(d); err != nil {
		return err
	}
	if s.path == "" {
		s.data = d
		return nil
	}
	enc, err := s.encrypt(d)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path, enc); err != nil {
		return fmt.Errorf("writing secret store: %w", err)
	}
	s.data = d
	s.stamp = fileStamp{ok: true, nonce: string(enc[len(storeMagic)+keyCheckLen:][:s.aead.NonceSize()])}
	return nil
}

func cloneData(d *storeData) *storeData {
	return &storeData{
		Secrets: append([]storedSecret(nil), d.Secrets...),
		Opaque:  append([]storedOpaque(nil), d.Opaque...),
	}
}

// ValidName reports whether name is a legal secret name: 1-128 characters
// from A-Z a-z 0-9 _ . - , not starting with . or -.
func ValidName(name string) bool {
	if name == "" || len(name) > 128 || name[0] == '.' || name[0] == '-' {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("invalid secret name %q: use 1-128 characters from A-Z a-z 0-9 _ . - (not starting with . or -)", name)
	}
	return nil
}

func checkScope(s Scope) error {
	if len(s) > 256 {
		return errors.New("invalid sandbox name: longer than 256 bytes")
	}
	for _, r := range string(s) {
		if r < 0x20 || r == 0x7f {
			return errors.New("invalid sandbox name: contains control characters")
		}
	}
	return nil
}

// Set stores value under name in scope, replacing an older value. A running
// daemon sees the new value on its next Get.
func (s *Store) Set(scope Scope, name, value string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := checkScope(scope); err != nil {
		return err
	}
	if value == "" {
		return fmt.Errorf("setting secret %s (%s): empty value", name, scope)
	}
	now := time.Now().UTC()
	return s.update(func(d *storeData) error {
		for i := range d.Secrets {
			if d.Secrets[i].Scope == string(scope) && d.Secrets[i].Name == name {
				d.Secrets[i].Value, d.Secrets[i].Updated = value, now
				return nil
			}
		}
		d.Secrets = append(d.Secrets, storedSecret{Scope: string(scope), Name: name, Value: value, Updated: now})
		return nil
	})
}

// Delete removes name from scope. Deleting a missing secret is an error
// wrapping ErrNotFound.
func (s *Store) Delete(scope Scope, name string) error {
	return s.update(func(d *storeData) error {
		for i := range d.Secrets {
			if d.Secrets[i].Scope == string(scope) && d.Secrets[i].Name == name {
				d.Secrets = append(d.Secrets[:i], d.Secrets[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("secret %s (%s): %w", name, scope, ErrNotFound)
	})
}

// Get returns the value of name in exactly scope (no fallback; see Chain).
func (s *Store) Get(scope Scope, name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return "", err
	}
	for _, e := range s.data.Secrets {
		if e.Scope == string(scope) && e.Name == name {
			return e.Value, nil
		}
	}
	return "", fmt.Errorf("secret %s (%s): %w", name, scope, ErrNotFound)
}

// Secret implements Provider.
func (s *Store) Secret(_ context.Context, scope Scope, name string) (string, error) {
	return s.Get(scope, name)
}

// List returns every stored secret, global first, then by sandbox and name.
// It never returns values.
func (s *Store) List() ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(s.data.Secrets))
	for _, e := range s.data.Secrets {
		out = append(out, Entry{Name: e.Name, Scope: Scope(e.Scope), Updated: e.Updated})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Scope != out[j].Scope {
			return out[i].Scope < out[j].Scope
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// OpaqueRef names one opaque header value: the header of a rule, for one
// sandbox.
type OpaqueRef struct {
	Sandbox string `json:"sandbox"`
	Rule    string `json:"rule"`
	Header  string `json:"header"`
}

// String never shows a value: "sandbox/rule/Header".
func (r OpaqueRef) String() string { return r.Sandbox + "/" + r.Rule + "/" + r.Header }

func (r OpaqueRef) norm() OpaqueRef {
	r.Header = textproto.CanonicalMIMEHeaderKey(r.Header)
	return r
}

// PutOpaque stores the write-only value of an opaque header (given once, in
// the policy sent with attach), encrypted like every other value.
func (s *Store) PutOpaque(ref OpaqueRef, value string) error {
	ref = ref.norm()
	if ref.Sandbox == "" || ref.Header == "" {
		return fmt.Errorf("storing opaque value %s: sandbox and header are required", ref)
	}
	if err := checkScope(Scope(ref.Sandbox)); err != nil {
		return err
	}
	now := time.Now().UTC()
	return s.update(func(d *storeData) error {
		for i, o := range d.Opaque {
			if (OpaqueRef{o.Sandbox, o.Rule, o.Header}) == ref {
				d.Opaque[i].Value, d.Opaque[i].Updated = value, now
				return nil
			}
		}
		d.Opaque = append(d.Opaque, storedOpaque{Sandbox: ref.Sandbox, Rule: ref.Rule, Header: ref.Header, Value: value, Updated: now})
		return nil
	})
}

// Opaque returns the value stored by PutOpaque.
func (s *Store) Opaque(ref OpaqueRef) (string, error) {
	ref = ref.norm()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return "", err
	}
	for _, o := range s.data.Opaque {
		if (OpaqueRef{o.Sandbox, o.Rule, o.Header}) == ref {
			return o.Value, nil
		}
	}
	return "", fmt.Errorf("opaque value %s: %w", ref, ErrNotFound)
}

// DeleteOpaque removes every opaque value of a sandbox (on detach) and
// returns how many were removed.
func (s *Store) DeleteOpaque(sandbox string) (int, error) {
	n := 0
	err := s.update(func(d *storeData) error {
		kept := d.Opaque[:0]
		for _, o := range d.Opaque {
			if o.Sandbox == sandbox {
				n++
				continue
			}
			kept = append(kept, o)
		}
		d.Opaque = kept
		return nil
	})
	return n, err
}

// ListOpaque returns the references of the stored opaque values (never the
// values).
func (s *Store) ListOpaque() ([]OpaqueRef, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	out := make([]OpaqueRef, 0, len(s.data.Opaque))
	for _, o := range s.data.Opaque {
		out = append(out, OpaqueRef{o.Sandbox, o.Rule, o.Header})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}
