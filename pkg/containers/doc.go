// Package containers finds what sluice needs to attach to a container: its
// init process, that process's cgroup v2 directory and its network
// namespace. It asks the container runtime's own state, never a guess from
// names:
//
//   - Docker: the Engine API on its Unix socket (GET /containers/{id}/json,
//     State.Pid). Docker accepts a unique id prefix or the container name.
//   - containerd: the runtime v2 task state that containerd's shim keeps on
//     tmpfs, /run/containerd/io.containerd.runtime.v2.task/NAMESPACE/ID/init.pid
//     (the bundle directory the shim writes the init pid into). This needs no
//     gRPC client and works for every containerd client (nerdctl, ctr, the
//     Kubernetes CRI plugin, Docker's "moby" namespace). Every namespace is
//     searched; a unique id prefix is accepted.
//
// It also parses the OCI runtime state a hook receives on standard input
// (ParseOCIState) and turns it into what to ask the daemon (PlanHook).
//
// Invariants: a Target always names a live process (not a zombie) and an
// existing cgroup v2 directory; a pid file that names a dead process is an
// error, never a stale attach. Resolvers hold no state beyond their
// configuration and are safe for concurrent use.
package containers
