package daemon

import (
	"context"
	"fmt"
	"net"
)

// serveMetrics serves Prometheus /metrics on the configured address until
// ctx is done.
func (d *Daemon) serveMetrics(ctx context.Context) error {
	ln, err := net.Listen("tcp", d.cfg.Metrics)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	d.metrics.BeforeScrape(d.updateOccupancy)
	go func() {
		if err := d.metrics.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			d.log.Error("metrics server stopped", "err", err)
		}
	}()
	return nil
}
