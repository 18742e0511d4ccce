// Package daemon wires one sandbox's enforcer registration, resolver and
// proxy together (Runtime, Sandbox; pkg/runner uses them for `sluice run`),
// and implements the long-running host agent with its control
// API on a Unix socket (Daemon; the client is pkg/client, the wire types
// pkg/api).
//
// Invariants: a Sandbox is registered in the kernel before it serves, and
// stays registered (pinned) when the process stops serving, so a dead daemon
// means refused connections, never unfiltered ones. The control API answers
// root callers only. Runtime and Daemon are safe for concurrent use.
package daemon
