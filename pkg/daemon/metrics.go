package daemon

import "context"

// serveMetrics serves Prometheus metrics on the configured address until
// ctx is done.
func (d *Daemon) serveMetrics(ctx context.Context) error {
	return nil
}
