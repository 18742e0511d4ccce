package secrets

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SigningKeyFile is the callback signing key in the state directory
// (PKCS#8 PEM, mode 0600).
const SigningKeyFile = "callback-signing.key"

// SignatureHeader carries the callback request signature.
const SignatureHeader = "Sluice-Signature"

// LoadOrCreateSigningKey returns the Ed25519 key that signs credential
// callbacks, creating dir (0700) and the key file (0600) on first use. A key
// file that group or others may read is refused.
func LoadOrCreateSigningKey(dir string) (ed25519.PrivateKey, error) {
	if dir == "" {
		return nil, errors.New("callback signing key: empty state directory")
	}
	path := filepath.Join(dir, SigningKeyFile)
	k, err := readSigningKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("callback signing key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating callback signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encoding callback signing key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := createExclusive(path, data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readSigningKey(path)
		}
		return nil, fmt.Errorf("creating callback signing key: %w", err)
	}
	return priv, nil
}

func readSigningKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading callback signing key: %w", err)
	}
	defer f.Close()
	if err := checkPrivate(f, path); err != nil {
		return nil, fmt.Errorf("reading callback signing key: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 8192))
	if err != nil {
		return nil, fmt.Errorf("reading callback signing key %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("reading callback signing key %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading callback signing key %s: malformed key", path)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("reading callback signing key %s: not an Ed25519 key", path)
	}
	return priv, nil
}

// PublicKeyPEM encodes pub as a PKIX "PUBLIC KEY" PEM block.
func PublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKeyPEM is the inverse of PublicKeyPEM.
func ParsePublicKeyPEM(data []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("parsing public key: not a PEM PUBLIC KEY block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("parsing public key: not an Ed25519 key")
	}
	return pub, nil
}

// KeyID is a stable identifier of pub: base64url (no padding) of the first
// 16 bytes of SHA-256 over the raw key. It is the JWK "kid".
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// JWK is the RFC 8037 form of an Ed25519 public key.
type JWK struct {
	Kty string `json:"kty"` // "OKP"
	Crv string `json:"crv"` // "Ed25519"
	X   string `json:"x"`   // base64url, no padding
	Kid string `json:"kid"`
	Alg string `json:"alg"` // "EdDSA"
	Use string `json:"use"` // "sig"
}

// PublicKeyJWK encodes pub as a JWK (kty OKP, crv Ed25519).
func PublicKeyJWK(pub ed25519.PublicKey) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, errors.New("encoding public key: not an Ed25519 key")
	}
	return json.Marshal(JWK{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(pub), Kid: KeyID(pub), Alg: "EdDSA", Use: "sig"})
}

// ParseJWK is the inverse of PublicKeyJWK.
func ParseJWK(data []byte) (ed25519.PublicKey, error) {
	var j JWK
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("parsing JWK: %w", err)
	}
	if j.Kty != "OKP" || j.Crv != "Ed25519" {
		return nil, errors.New("parsing JWK: expect kty OKP and crv Ed25519")
	}
	x, err := base64.RawURLEncoding.DecodeString(j.X)
	if err != nil || len(x) != ed25519.PublicKeySize {
		return nil, errors.New("parsing JWK: x is not a base64url Ed25519 key")
	}
	return ed25519.PublicKey(x), nil
}

// signedMessage is what the signature covers: "<t>.<body>".
func signedMessage(ts string, body []byte) []byte {
	m := make([]byte, 0, len(ts)+1+len(body))
	m = append(m, ts...)
	m = append(m, '.')
	return append(m, body...)
}

// Sign returns the Sluice-Signature header value for body at time now:
// "t=<unix seconds>,ed25519=<base64 std, padded>" with the signature over
// "<t>.<body>".
func Sign(key ed25519.PrivateKey, body []byte, now time.Time) string {
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := ed25519.Sign(key, signedMessage(ts, body))
	return "t=" + ts + ",ed25519=" + base64.StdEncoding.EncodeToString(sig)
}

// Verify checks a Sluice-Signature header against body and pub, for callback
// servers. The timestamp must be within maxSkew of the current time (replays
// inside that window are the server's to refuse if it cares). Entries are
// comma-separated key=value pairs; unknown keys are ignored and any one valid
// ed25519= entry suffices.
func Verify(pub ed25519.PublicKey, header string, body []byte, maxSkew time.Duration) error {
	return VerifyAt(pub, header, body, maxSkew, time.Now())
}

// VerifyAt is Verify with an explicit current time.
func VerifyAt(pub ed25519.PublicKey, header string, body []byte, maxSkew time.Duration, now time.Time) error {
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("verifying signature: not an Ed25519 public key")
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return errors.New("verifying signature: malformed header: expect t=<unix>,ed25519=<base64>")
		}
		switch k {
		case "t":
			if ts != "" {
				return errors.New("verifying signature: t= given twice")
			}
			ts = v
		case "ed25519":
			// Only the canonical encoding: the decoder skips CR and LF
			// and ignores the padding bits, so other spellings of the
			// same signature would verify too (found by FuzzVerify).
			sig, err := base64.StdEncoding.DecodeString(v)
			if err != nil || len(sig) != ed25519.SignatureSize || base64.StdEncoding.EncodeToString(sig) != v {
				return errors.New("verifying signature: ed25519= is not a base64 Ed25519 signature")
			}
			sigs = append(sigs, sig)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return errors.New("verifying signature: header lacks t= or ed25519=")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(sec, 10) != ts {
		return errors.New("verifying signature: t= is not a decimal unix time")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("verifying signature: timestamp is %s away from now, more than %s", d.Round(time.Second), maxSkew)
	}
	msg := signedMessage(ts, body)
	for _, sig := range sigs {
		if ed25519.Verify(pub, msg, sig) {
			return nil
		}
	}
	return errors.New("verifying signature: no valid ed25519 signature for this key and body")
}
