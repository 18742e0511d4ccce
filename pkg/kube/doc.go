// Package kube attaches sluice to the Kubernetes pods of one node that opt
// in with the annotation sluice.dev/policy: <policy name>, and detaches them
// when they stop.
//
// The core is Reconciler, a pure state machine: it takes pod watch events
// (ADDED, MODIFIED, DELETED with the pod object) and returns the attach and
// detach actions to take. It does no I/O, so it is tested against watch
// streams in the API server's wire format (testdata/kubernetes/). Watch is a minimal list+watch over the API
// server's REST API with the pod's service-account token (no client-go), and
// Run applies the actions through interfaces the caller provides (the
// daemon client, a container resolver).
//
// Invariants: one sandbox per pod (its pod cgroup, which holds every
// container of the pod, init containers included); a pod is attached once a
// container of it has a process, re-attached (policy replaced live) when its
// annotation changes, and detached when it ends, is deleted, leaves the node
// or drops the annotation. Reconciler is not safe for concurrent use; Run
// drives it from one goroutine.
package kube
