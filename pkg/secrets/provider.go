package secrets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Provider is one source of named secrets. Secret returns the value of name
// in exactly scope, or an error wrapping ErrNotFound when it has none; any
// other error stops the Chain (fail closed). Errors never contain values.
type Provider interface {
	Secret(ctx context.Context, scope Scope, name string) (string, error)
}

var (
	_ Provider = (*Store)(nil)
	_ Provider = Env{}
	_ Provider = Dir{}
	_ Provider = Static(nil)
)

// Env reads secrets from the daemon's environment: the secret NAME is the
// variable Prefix+NAME. It answers only the Global scope.
type Env struct {
	Prefix string
	// Getenv is os.LookupEnv in production; tests inject their own.
	Getenv func(string) (string, bool)
}

// Secret implements Provider.
func (e Env) Secret(_ context.Context, scope Scope, name string) (string, error) {
	if scope != Global || !ValidName(name) {
		return "", ErrNotFound // the chain names the secret and the scopes
	}
	get := e.Getenv
	if get == nil {
		get = os.LookupEnv
	}
	v, ok := get(e.Prefix + name)
	if !ok || v == "" {
		return "", fmt.Errorf("secret %s (%s): environment variable %s%s unset: %w", name, scope, e.Prefix, name, ErrNotFound)
	}
	return v, nil
}

// Dir reads secrets from a directory of files, the way Kubernetes secret
// volumes and systemd credentials ($CREDENTIALS_DIRECTORY) mount them: the
// secret NAME is the file Path/NAME. One trailing newline is removed. It
// answers only the Global scope; names with "/" or ".." are refused.
type Dir struct {
	Path string
}

// maxSecretFile bounds one secret file.
const maxSecretFile = 1 << 20

// Secret implements Provider.
func (d Dir) Secret(_ context.Context, scope Scope, name string) (string, error) {
	if scope != Global {
		return "", ErrNotFound // the chain names the secret and the scopes
	}
	if name == "" || strings.Contains(name, "/") || strings.Contains(name, "..") || strings.ContainsRune(name, 0) || !ValidName(name) {
		return "", fmt.Errorf("secret name %q is not allowed for a file provider", name)
	}
	p := filepath.Join(d.Path, name)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("secret %s: no file %s: %w", name, p, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("secret %s: %w", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("secret %s: reading %s: %w", name, p, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("secret %s: %s is larger than %d bytes", name, p, maxSecretFile)
	}
	v := trimNewline(string(b))
	if v == "" {
		return "", fmt.Errorf("secret %s: %s is empty: %w", name, p, ErrNotFound)
	}
	return v, nil
}

// trimNewline removes one trailing "\n" or "\r\n".
func trimNewline(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

// Static is a fixed set of global secrets (for `sluice run`: --secrets-file
// and --secret-env). It answers only the Global scope.
type Static map[string]string

// Secret implements Provider.
func (m Static) Secret(_ context.Context, scope Scope, name string) (string, error) {
	if v, ok := m[name]; ok && scope == Global {
		return v, nil
	}
	// Plain ErrNotFound: the chain asks every provider for the sandbox's
	// scope first on every request, and names the secret when nothing has it.
	return "", ErrNotFound
}

// Chain resolves a secret for a sandbox: the sandbox's scope first, then the
// global scope, each across the providers in order. Safe for concurrent use
// if its providers are.
type Chain struct {
	providers []Provider
}

// NewChain returns a chain over providers (first match wins within a scope).
func NewChain(providers ...Provider) *Chain {
	return &Chain{providers: append([]Provider(nil), providers...)}
}

// Lookup resolves name for sandbox ("" means global only). A missing secret
// is an error wrapping ErrNotFound that names the secret and the sandbox; any
// provider error other than not-found stops the search (fail closed).
func (c *Chain) Lookup(ctx context.Context, sandbox, name string) (string, error) {
	if !ValidName(name) {
		return "", fmt.Errorf("invalid secret name %q", name)
	}
	scopes := [2]Scope{SandboxScope(sandbox), Global}
	from := 0
	if sandbox == "" {
		from = 1
	}
	for _, sc := range scopes[from:] {
		for _, p := range c.providers {
			if err := ctx.Err(); err != nil {
				return "", fmt.Errorf("resolving secret %s: %w", name, err)
			}
			v, err := p.Secret(ctx, sc, name)
			if err == nil {
				return v, nil
			}
			if !errors.Is(err, ErrNotFound) {
				return "", fmt.Errorf("resolving secret %s for sandbox %q: %w", name, sandbox, err)
			}
		}
	}
	if sandbox == "" {
		return "", fmt.Errorf("secret %s is not set (global scope): %w", name, ErrNotFound)
	}
	return "", fmt.Errorf("secret %s is not set for sandbox %q (sandbox or global scope): %w", name, sandbox, ErrNotFound)
}

// ParseProvider builds a provider from its daemon config form:
//
//	store         the encrypted store (store must not be nil)
//	env           the daemon's environment: secret NAME is variable NAME
//	env:PREFIX    secret NAME is variable PREFIXNAME
//	file:/DIR     secret NAME is the file /DIR/NAME
//
// getenv may be nil (os.LookupEnv).
func ParseProvider(spec string, store *Store, getenv func(string) (string, bool)) (Provider, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "store":
		if store == nil || arg != "" {
			return nil, fmt.Errorf("secret provider %q: the store is not available", spec)
		}
		return store, nil
	case "env":
		return Env{Prefix: arg, Getenv: getenv}, nil
	case "file":
		if arg == "" || !filepath.IsAbs(arg) {
			return nil, fmt.Errorf("secret provider %q: expect file:/absolute/directory", spec)
		}
		return Dir{Path: filepath.Clean(arg)}, nil
	}
	return nil, fmt.Errorf("secret provider %q: expect 'store', 'env', 'env:PREFIX' or 'file:/DIR'", spec)
}
