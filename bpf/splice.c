// SPDX-License-Identifier: GPL-2.0
/*
 * sluice: in-kernel splice of connections the proxy decided to splice
 * (issue #21). Separate from sluice.c: it is loaded once per daemon by
 * pkg/enforcer/splice.go, never attached to a cgroup.
 *
 * A spliced connection is a pair of TCP sockets in the proxy: C (accepted
 * from the sandbox) and U (dialled to the original destination). Both are
 * put in two sockhashes keyed by their socket cookie: `targets` (no program
 * attached: it only gives each socket a psock, so that it can be the target
 * of a redirect) and `socks` (the sk_skb verdict program, attach type
 * BPF_SK_SKB_VERDICT, no stream parser). `peers` maps each cookie to the
 * other's. The verdict runs for every skb either socket receives and
 * redirects it to the *egress* of the peer, looked up in `targets`: the
 * bytes never reach user space. `moved` counts the bytes redirected from
 * each socket.
 *
 * Ordering (the race of issue #21): the proxy has already read the first
 * bytes P of C (the peek) into user space, and more bytes Q may sit in C's
 * receive queue, unread, when the sockets are inserted. The proxy does:
 *
 *   1. write P to U, completely (blocking write: P is in U's send queue);
 *   1b. read C without waiting until its receive queue is empty (EAGAIN)
 *      and write those bytes R to U as well. This matters: the psock's
 *      read_skb (tcp_read_skb) hands *whole* skbs to the verdict and
 *      ignores the part of the head skb already copied to user space, so an
 *      skb the peek read only in part would be sent twice. After EAGAIN
 *      every queued skb was consumed entirely; later segments start fresh
 *      skbs. If the read sees EOF, the proxy splices in user space instead;
 *   2. peers[C] = U, peers[U] = C;
 *   3. insert C and U into targets, then U and C into socks;
 *   4. kick both sockets: setsockopt(SO_RCVLOWAT, 1), which runs
 *      tcp_data_ready() and so the psock's data_ready, i.e. the verdict
 *      program over everything already queued.
 *
 * Direction C -> U. Every byte of C after P and R is received after step 1b,
 * either before step 3 (it sits, unread, in C's receive queue: Q) or after. Once C has a psock, user
 * space can no longer take bytes from C's receive queue (tcp_bpf's recvmsg
 * only reads the psock's ingress list, which this program never fills), so
 * every byte after P goes through this program, in sequence order: the
 * psock's read_skb drains the receive queue in order under the socket lock,
 * whether it is triggered by a new segment or by the kick of step 4 (without
 * the kick, Q would wait for the next segment, forever if the client waits
 * for an answer first). A redirect appends to U's psock queue, sent in order
 * by the psock's worker after P and R, in U's send queue before step 2.
 * Both sockets are in `targets` before either is in `socks` (before any
 * verdict runs), so no skb of either can find its peer missing, whatever
 * arrives between the two insertions into `socks` (a first version with a
 * single map dropped U's early answer when U entered before C).
 *
 * Direction U -> C. The proxy never reads U and never writes C: every byte
 * of U goes through this program in order (U's queue before step 3 is
 * drained by the kick), appended to C's psock queue in order.
 *
 * A missing peer (pair being removed) drops the skb: passing it to user
 * space could reorder it. The proxy only removes a pair when it is done with
 * both directions.
 *
 * Close: the redirect does not carry FIN. The proxy reads each socket in
 * user space only to see EOF (tcp_bpf's recvmsg returns 0 on RCV_SHUTDOWN);
 * then it waits until the peer has queued every byte redirected to it
 * (P + R + moved[src], compared with tcpi_bytes_acked + SIOCOUTQ of the peer:
 * the FIN skb is read after every data skb, so moved[src] is final) and
 * shuts the peer down for writing.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SPLICE_MAX 65536 /* sockets: two per spliced connection */

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SPLICE_MAX);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u64); /* socket fd on update */
} socks SEC(".maps");

/* The same sockets, no program attached: redirect targets. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SPLICE_MAX);
	__type(key, __u64);
	__type(value, __u64);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SPLICE_MAX);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u64); /* the peer's cookie */
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SPLICE_MAX);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u64); /* bytes redirected from this socket */
} moved SEC(".maps");

SEC("sk_skb/verdict")
int splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u64 *peer = bpf_map_lookup_elem(&peers, &cookie);
	if (!peer)
		return SK_DROP;
	__u64 *n = bpf_map_lookup_elem(&moved, &cookie);
	if (n)
		__sync_fetch_and_add(n, skb->len);
	return bpf_sk_redirect_hash(skb, &targets, peer, 0);
}

char LICENSE[] SEC("license") = "GPL";
