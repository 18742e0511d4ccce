// Package client talks to the sluice daemon's control API on its Unix
// socket (root only): attach, detach, list, export a sandbox CA, stream
// audit events. The wire types are pkg/api's.
//
// A Client is safe for concurrent use.
package client
