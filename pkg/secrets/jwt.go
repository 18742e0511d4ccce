package secrets

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// assertionLifetime is the validity of an RFC 7523 assertion (Google
// accepts at most one hour).
const assertionLifetime = 5 * time.Minute

// serviceKey is the private key of an RFC 7523 jwt_bearer grant: a Google
// service-account JSON or a PEM key (RSA: RS256, EC P-256: ES256).
type serviceKey struct {
	key    crypto.Signer
	alg    string // RS256 or ES256
	kid    string // private_key_id of a service-account JSON
	email  string // client_email of a service-account JSON
	google bool
}

// errBadServiceKey never quotes the key.
var errBadServiceKey = errors.New("oauth2 private key: expect a service-account JSON or a PEM RSA or EC P-256 private key")

func parseServiceKey(v string) (*serviceKey, error) {
	v = strings.TrimSpace(v)
	sk := &serviceKey{}
	pemText := v
	if strings.HasPrefix(v, "{") {
		var j struct {
			Type         string `json:"type"`
			PrivateKey   string `json:"private_key"`
			PrivateKeyID string `json:"private_key_id"`
			ClientEmail  string `json:"client_email"`
		}
		if err := json.Unmarshal([]byte(v), &j); err != nil || j.PrivateKey == "" {
			return nil, errBadServiceKey
		}
		pemText, sk.kid, sk.email, sk.google = j.PrivateKey, j.PrivateKeyID, j.ClientEmail, true
	}
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return nil, errBadServiceKey
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, errBadServiceKey
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		sk.key, sk.alg = k, "RS256"
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, errBadServiceKey
		}
		sk.key, sk.alg = k, "ES256"
	default:
		return nil, errBadServiceKey
	}
	return sk, nil
}

// assertion returns a signed JWT (RFC 7523 section 3): iss and sub are the
// client id (default: the service account's client_email), aud the
// audience (default: the token URL), with the scopes as the scope claim.
func (sk *serviceKey) assertion(cfg *policy.OAuth2, now time.Time) (string, error) {
	iss := cfg.ClientID
	if iss == "" {
		iss = sk.email
	}
	if iss == "" {
		return "", errors.New("oauth2 jwt_bearer: set client_id (the assertion's issuer) for a PEM key")
	}
	aud := cfg.Audience
	if aud == "" {
		aud = cfg.TokenURL
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("oauth2 jwt_bearer: %w", err)
	}
	header := map[string]string{"alg": sk.alg, "typ": "JWT"}
	if sk.kid != "" {
		header["kid"] = sk.kid
	}
	claims := map[string]any{
		"iss": iss, "sub": iss, "aud": aud,
		"iat": now.Unix(), "exp": now.Add(assertionLifetime).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti[:]),
	}
	if len(cfg.Scopes) > 0 {
		claims["scope"] = strings.Join(cfg.Scopes, " ")
	}
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	signing := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	digest := sha256.Sum256([]byte(signing))
	var sig []byte
	switch k := sk.key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:]); err != nil {
			return "", errors.New("oauth2 jwt_bearer: signing the assertion failed")
		}
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			return "", errors.New("oauth2 jwt_bearer: signing the assertion failed")
		}
		sig = make([]byte, 64) // JWS ES256: r || s, 32 bytes each
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
