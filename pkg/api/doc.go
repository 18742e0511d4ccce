// Package api holds the wire types of the daemon's control API (JSON over
// HTTP on a Unix socket): what the server (pkg/daemon) decodes and answers,
// and what the client (pkg/client) sends and reads. It decides nothing and
// imports nothing of sluice: a field changes here, on both sides at once.
package api
