// Package cgroup finds the cgroup v2 hierarchy (unified or hybrid hosts),
// creates and removes sandbox cgroups, resolves cgroup ids and the cgroup of a
// process, lists and kills the processes in one.
//
// A cgroup's id is the inode number of its directory in cgroupfs; it is the
// value bpf_get_current_cgroup_id returns for processes inside it. Functions
// here are safe for concurrent use; they hold no state.
package cgroup
