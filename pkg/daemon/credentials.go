package daemon

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sluice-dev/sluice/pkg/proxy"
	"github.com/sluice-dev/sluice/pkg/secrets"
)

// setCredentials gives rt the OAuth2 token minter and the SigV4 signer of
// the policies' oauth2 and aws_sigv4 blocks. Their secrets come from
// lookup; rotated refresh tokens are written to store (nil: kept in
// memory, as `sluice run` does without a secret store). The token
// endpoints are dialled by sluice itself (the sandbox need not reach
// them) and verified against the system roots plus upstreamCAs, like
// every upstream.
func (rt *Runtime) setCredentials(lookup secrets.Lookuper, store *secrets.Store, upstreamCAs []string) error {
	roots, err := proxy.RootPool(upstreamCAs...)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}}
	var persist secrets.Persister
	if store != nil {
		persist = store
	}
	rt.Tokens = secrets.NewOAuth2(lookup, persist, client, rt.Log.With(slog.String("component", "oauth2")))
	rt.Signer = secrets.NewSigV4(lookup)
	return nil
}
