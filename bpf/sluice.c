// SPDX-License-Identifier: GPL-2.0
/*
 * sluice: egress enforcement for a sandbox cgroup (and every cgroup below it).
 *
 * Decision per socket operation, keyed by the *sandbox id*: the id of the
 * outermost registered cgroup among the caller's ancestors
 * (bpf_get_current_ancestor_cgroup_id walked from the root down). A child
 * cgroup created inside a sandbox therefore maps to the same sandbox, and a
 * caller whose cgroup has no registered ancestor is refused: these programs are
 * only attached to sandbox cgroups, so that case means the sandbox is being
 * torn down or its registration was lost, and failing closed is right.
 * A fence (sluice daemon --fence) is the exception: it is registered with
 * SB_FENCE at a parent such as /docker, decides (refusing everything) only
 * for cgroups below it that no sandbox claims, and when a sandbox below it is
 * attached both run; see find_sandbox and redirected.
 *
 *   connect4/6   TCP to an allowlisted address: rewritten to the sandbox's proxy
 *                listener (127.0.0.1:P, or [::1]:P for IPv6); TCP to port 53
 *                also goes to the proxy (which hands it to the resolver), UDP
 *                to port 53 to the sandbox's resolver (127.0.0.1:D, [::1]:D;
 *                [::1]:P over UDP for a sandbox with SB_SHARED); a connect or
 *                send straight to one of those listeners that no program
 *                redirected is refused (own_listener); direct rules pass
 *                unchanged; everything else EPERM, counted and reported.
 *   sendmsg4/6   unconnected UDP: port 53 to the resolver, direct rules pass,
 *                anything else EPERM.
 *   recvmsg4/6,  rewrite the resolver's (and proxy's) address back to the one
 *   getpeername  the program asked, so glibc and musl accept DNS replies.
 *   sock_create  refuses raw, SCTP, MPTCP and ICMP sockets.
 *   bind4/6      refuses binding one of sluice's own ports, and rewrites a
 *                TCP bind to a wildcard or non-loopback address to loopback
 *                unless a listen rule names the port (see "Inbound" below).
 *   sockops      original-destination recovery, see below.
 *   setsockopt   refuses socket options that make the kernel route a packet
 *                somewhere else than the address connect/sendmsg saw (see
 *                "Source routing" below).
 *   cgroup_skb   (egress) drops packets that still carry a routing header or
 *                IPv4 options, and records which process sent each UDP DNS
 *                query, so the resolver can attribute it (see dns_origin).
 *
 * IPv4-mapped IPv6 (::ffff:a.b.c.d) on a v6 socket never reaches connect4:
 * tcp_v6_connect hands it to tcp_v4_connect directly. connect6 therefore treats
 * it as the IPv4 address it maps (every address is stored v4-mapped in the
 * maps) and redirects it to ::ffff:127.0.0.1.
 *
 * Source routing. An IPv6 routing header (IPV6_RTHDR and its RFC 2292
 * spellings, set as a socket option or as sendmsg ancillary data) or an IPv4
 * loose/strict source route (IP_OPTIONS, or IP_RETOPTS ancillary data) makes
 * the kernel send the packet to the route's first hop, while connect/sendmsg
 * only saw (and rewrote) the final destination. A sandbox could so reach any
 * address with a datagram "to the resolver", or a TCP SYN carrying data. The
 * setsockopt program refuses every option that can carry such a header
 * (IPV6_RTHDR, IPV6_2292RTHDR, IPV6_DSTOPTS, IPV6_2292DSTOPTS,
 * IPV6_RTHDRDSTOPTS, IPV6_2292PKTOPTIONS, and all of IP_OPTIONS/IP_RETOPTS:
 * no sandbox needs IPv4 options); ancillary data never passes it, so the
 * egress program drops any sandbox packet whose IPv6 extension header chain
 * (walked up to MAX_EXT_HEADERS deep; deeper chains are dropped too) holds a
 * routing header, and any IPv4 packet with options. Both refuse in audit
 * mode too: like metadata, they defeat the mechanism, not the policy.
 *
 * Inbound. A passively established connection (the sandbox listened, a
 * peer connected) never passes connect4/6, so data could leave over it.
 * bind4/6 keep TCP listeners on loopback unless a listen rule names the port
 * (a bind to a non-loopback address with port 0 picks a source address for
 * an outgoing connection and is left alone). Whatever the bind, sockops marks
 * each accepted connection at BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB (before
 * accept() can return it), and the egress program checks its peer at the
 * first packet out: a loopback peer, or one a listen rule names for that
 * port (listen_allow), passes; otherwise every packet of the connection is
 * dropped (counted once, reason inbound) and the peer receives no byte.
 *
 * Original destination. connect4/6 keep {original address, port, pid, comm,
 * sandbox} in socket-local storage (BPF_MAP_TYPE_SK_STORAGE). The source port is
 * not chosen yet at that point, so a sockops program at
 * BPF_SOCK_OPS_TCP_CONNECT_CB (run by tcp_connect() after the source port is
 * bound and before the SYN is built) copies it into an LRU hash keyed by
 * {sandbox, client address, client port, proto}. The proxy accepts the
 * connection, knows the sandbox from the listener it accepted on, and does
 * LookupAndDelete with the peer address. Keying by sandbox as well as by the
 * 4-tuple half keeps the key unique when sandboxes in different network
 * namespaces use identical loopback addresses and ports; and because the entry
 * is written before the SYN exists, the proxy can never accept a connection
 * whose entry is not there yet. Sandboxes in the host network namespace share
 * one proxy listener (SB_SHARED, issue #21): their entries are keyed by
 * sandbox 0, which is unique because they share one namespace and one
 * listener address (two live connections to it cannot have the same client
 * address and port), and the daemon learns the sandbox from the entry.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif

char LICENSE[] SEC("license") = "GPL";

/* Referenced so that the BTF carries these types for bpf2go -type. */
const struct event *unused_event __attribute__((unused));
const struct counter_key *unused_ck __attribute__((unused));
const struct counter_val *unused_cv __attribute__((unused));
const struct orig_key *unused_ok __attribute__((unused));
const enum reason *unused_reason __attribute__((unused));
const enum allow_flag *unused_allow_flag __attribute__((unused));
const enum sandbox_flag *unused_sandbox_flag __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SANDBOXES);
	__type(key, __u64);
	__type(value, struct sandbox_cfg);
} sandboxes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_ALLOW);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, struct allow_val);
} allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig);
} orig_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ORIG);
	__type(key, struct orig_key);
	__type(value, struct orig);
} orig_by_tuple SEC(".maps");

/* dns_origin: the process behind a UDP socket that sent DNS to the resolver,
 * keyed by {sandbox (0 with SB_SHARED), zero address, client port, UDP}. A connected UDP socket
 * is bound after connect4 runs and sends without sendmsg4, so the egress skb
 * program (which sees the bound port) writes it. The resolver reads it with
 * the query's source port; LRU eviction bounds it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ORIG);
	__type(key, struct orig_key);
	__type(value, struct orig);
} dns_origin SEC(".maps");

/* listen_allow: the peers a listen rule admits, per sandbox (LPM on the
 * same key as allow; the value's ports are the listening ports, none means
 * any). listen_ports: the ports a sandbox may bind beyond loopback. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_LISTEN);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, struct allow_val);
} listen_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LISTEN);
	__type(key, struct listen_port_key);
	__type(value, __u32);
} listen_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inbound);
} inbound_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_COUNTERS);
	__type(key, struct counter_key);
	__type(value, struct counter_val);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

/* find_sandbox returns the configuration of the outermost registered cgroup
 * among the caller's ancestors, and its id in *id. A fence entry (SB_FENCE)
 * does not end the walk: a sandbox registered below it wins, and the fence
 * (which refuses everything) decides only when none is. */
static __always_inline struct sandbox_cfg *find_sandbox(__u64 *id)
{
	struct sandbox_cfg *fence = 0;
	__u64 fence_id = 0;
	for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
		__u64 cg = bpf_get_current_ancestor_cgroup_id(level);
		if (cg == 0)
			break;
		struct sandbox_cfg *cfg = bpf_map_lookup_elem(&sandboxes, &cg);
		if (!cfg)
			continue;
		if (cfg->flags & SB_FENCE) {
			if (!fence) {
				fence = cfg;
				fence_id = cg;
			}
			continue;
		}
		*id = cg;
		return cfg;
	}
	*id = fence_id;
	return fence;
}

static __always_inline void v4_to_addr(__u32 ip4, __u8 addr[16])
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4, 4);
}

static __always_inline void v6_to_addr(const __u32 ip6[4], __u8 addr[16])
{
	__builtin_memcpy(addr, ip6, 16);
}

static __always_inline int is_v4mapped(const __u8 addr[16])
{
	for (int i = 0; i < 10; i++)
		if (addr[i])
			return 0;
	return addr[10] == 0xff && addr[11] == 0xff;
}

/* Cloud metadata: 169.254.0.0/16 and fd00:ec2::254. */
static __always_inline int is_metadata(const __u8 a[16])
{
	if (is_v4mapped(a))
		return a[12] == 169 && a[13] == 254;
	static const __u8 ec2[16] = {0xfd, 0, 0, 0xec, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
	for (int i = 0; i < 16; i++)
		if (a[i] != ec2[i])
			return 0;
	return 1;
}

static __always_inline void count_refusal(__u64 sandbox, const __u8 addr[16], __u16 port,
					  __u16 proto, __u32 reason)
{
	struct counter_key ck = {};
	ck.sandbox = sandbox;
	__builtin_memcpy(ck.addr, addr, 16);
	ck.port = port;
	ck.proto = proto;
	ck.reason = reason;
	__u64 now = bpf_ktime_get_ns();
	struct counter_val *cv = bpf_map_lookup_elem(&counters, &ck);
	if (cv) {
		__sync_fetch_and_add(&cv->count, 1);
		cv->last_ns = now;
	} else {
		struct counter_val nv = {.count = 1, .last_ns = now};
		bpf_map_update_elem(&counters, &ck, &nv, BPF_NOEXIST);
	}
}

static __always_inline void refuse(__u64 sandbox, const __u8 addr[16], __u16 port,
				   __u16 proto, __u32 reason, __u32 audit)
{
	count_refusal(sandbox, addr, port, proto, reason);
	__u64 now = bpf_ktime_get_ns();
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->sandbox = sandbox;
	e->cgroup = bpf_get_current_cgroup_id();
	e->ts_ns = now;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->reason = reason;
	__builtin_memcpy(e->addr, addr, 16);
	e->port = port;
	e->proto = proto;
	e->audit = audit;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* check looks the destination up in the sandbox's allowlist. It returns 0 when
 * allowed (and sets *flags) or a refusal reason. */
static __always_inline __u32 check(__u64 sandbox, const __u8 addr[16], __u16 port,
				   __u16 proto, __u32 *flags)
{
	struct allow_key k = {};
	k.prefixlen = 64 + 128;
	__builtin_memcpy(k.sandbox, &sandbox, 8);
	__builtin_memcpy(k.addr, addr, 16);
	struct allow_val *v = bpf_map_lookup_elem(&allow, &k);
	if (!v)
		return REASON_NOT_ALLOWED;
	if (v->flags & AL_DENY)
		return REASON_DENY_RULE;
	if (is_metadata(addr) && !(v->flags & AL_STATIC))
		return REASON_METADATA;
	if (v->expires_ns && v->expires_ns < bpf_ktime_get_ns())
		return REASON_EXPIRED;
	if (v->nports) {
		int ok = 0;
		for (int i = 0; i < MAX_PORTS; i++) {
			if (i < v->nports && v->ports[i] == port)
				ok = 1;
		}
		if (!ok)
			return REASON_PORT;
	}
	if (proto == PROTO_UDP && !((v->flags & AL_DIRECT) && (v->flags & AL_UDP)))
		return REASON_UDP;
	*flags = v->flags;
	return 0;
}

static __always_inline void remember(struct bpf_sock *sk, __u64 sandbox,
				     const __u8 addr[16], __u16 port, __u8 v4, __u8 shared)
{
	if (!sk)
		return;
	struct orig *o = bpf_sk_storage_get(&orig_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	o->sandbox = sandbox;
	__builtin_memcpy(o->addr, addr, 16);
	o->port = port;
	o->redirected = 1;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->cgroup = bpf_get_current_cgroup_id();
	o->v4 = v4;
	o->shared = shared;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline __u16 sock_proto(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM ? PROTO_TCP : PROTO_UDP;
}

/* Rewrite helpers. The redirect target of an IPv4 destination is
 * 127.0.0.1, of an IPv6 one [::1], of a v4-mapped one ::ffff:127.0.0.1. */
static __always_inline void set4(struct bpf_sock_addr *ctx, __u16 port)
{
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(port);
}

static __always_inline void set6(struct bpf_sock_addr *ctx, __u16 port, int mapped)
{
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(port);
}

/* record_sandbox is the sandbox part of the key of o's connection and DNS
 * records: 0 for a sandbox on the daemon's shared listeners (SB_SHARED),
 * whose daemon learns the sandbox from the record itself. */
static __always_inline __u64 record_sandbox(const struct orig *o)
{
	return o->shared ? 0 : o->sandbox;
}

/* is_loop1 reports whether a connect or send to addr reaches a listener on
 * 127.0.0.1 or ::1: those addresses, and the unspecified ones (0.0.0.0 and
 * ::, which Linux delivers to the local host). */
static __always_inline int is_loop1(const __u8 a[16])
{
	if (is_v4mapped(a))
		return (a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 1) ||
		       (!a[12] && !a[13] && !a[14] && !a[15]);
	for (int i = 0; i < 15; i++)
		if (a[i])
			return 0;
	return a[15] <= 1;
}

/* is_resolver reports whether addr:port is the sandbox's UDP resolver:
 * 127.0.0.1:dns_port (also as ::ffff:127.0.0.1), and [::1]:dns_port, or
 * [::1]:proxy_port for a sandbox with SB_SHARED (the shared socket). */
static __always_inline int is_resolver(const __u8 a[16], __u16 port, struct sandbox_cfg *cfg)
{
	if (port == 0 || !is_loop1(a))
		return 0;
	if (is_v4mapped(a) || !(cfg->flags & SB_SHARED))
		return port == cfg->dns_port;
	return port == cfg->proxy_port;
}

/* own_listener reports whether addr:port is one of the sandbox's redirect
 * targets (the proxy, or the resolver for proto). */
static __always_inline int own_listener(const __u8 a[16], __u16 port, __u16 proto,
					struct sandbox_cfg *cfg)
{
	if (proto == PROTO_UDP)
		return is_resolver(a, port, cfg);
	return port != 0 && port == cfg->proxy_port && is_loop1(a);
}

/* redirected reports whether a program redirected the socket before (a
 * socket connected to the resolver that sends again, a v6 socket whose
 * v4-mapped send reaches sendmsg4 after connect6 rewrote it, or the second
 * run of the programs attached at a fence and at a sandbox below it). */
static __always_inline int redirected(struct bpf_sock *sk)
{
	if (!sk)
		return 0;
	struct orig *o = bpf_sk_storage_get(&orig_sk, sk, 0, 0);
	return o && o->redirected;
}

/* decide handles connect and sendmsg for both families. It returns 1 to let
 * the call proceed (possibly rewritten) and 0 for EPERM. */
static __always_inline int decide(struct bpf_sock_addr *ctx, __u8 addr[16], int family,
				  int is_sendmsg)
{
	__u64 sb = 0;
	struct sandbox_cfg *cfg = find_sandbox(&sb);
	__u16 port = bpf_ntohs(ctx->user_port);
	__u16 proto = sock_proto(ctx);
	int mapped = is_v4mapped(addr);
	if (!cfg) {
		refuse(0, addr, port, proto, REASON_UNKNOWN_SANDBOX, 0);
		return 0;
	}
	__u32 audit = cfg->flags & SB_AUDIT;

	__u8 shared = (cfg->flags & SB_SHARED) ? 1 : 0;

	if (port == 53) {
		/* TCP DNS goes to the proxy, which hands it to the resolver;
		 * a shared sandbox's IPv6 UDP DNS to the shared socket. */
		__u16 to = cfg->dns_port;
		if (proto == PROTO_TCP || (shared && family == AF_INET6 && !mapped))
			to = cfg->proxy_port;
		if (to == 0) {
			refuse(sb, addr, port, proto, REASON_NOT_ALLOWED, 0);
			return 0;
		}
		remember(ctx->sk, sb, addr, port, family == AF_INET || mapped, shared);
		if (family == AF_INET)
			set4(ctx, to);
		else
			set6(ctx, to, mapped);
		return 1;
	}
	/* Straight to sluice's own listener: only a socket a program
	 * redirected before may (see redirected). Any other would reach the
	 * proxy or resolver with no record of its own, or with a stale one
	 * left by another socket on the same client port. */
	if (own_listener(addr, port, proto, cfg)) {
		if (redirected(ctx->sk))
			return 1;
		refuse(sb, addr, port, proto, REASON_OWN_LISTENER, 0);
		return 0;
	}

	__u32 flags = 0;
	__u32 reason = check(sb, addr, port, proto, &flags);
	if (reason) {
		/* Audit mode refuses nothing but cloud metadata. */
		int pass = audit && reason != REASON_METADATA;
		refuse(sb, addr, port, proto, reason, pass);
		if (!pass)
			return 0;
		if (proto == PROTO_UDP)
			return 1;
		flags = 0; /* audit: TCP still goes through the proxy, which logs it */
	}
	if (flags & AL_DIRECT)
		return 1;
	if (proto != PROTO_TCP || is_sendmsg)
		return 0;
	if (cfg->proxy_port == 0) {
		refuse(sb, addr, port, proto, REASON_NOT_ALLOWED, 0);
		return 0;
	}
	remember(ctx->sk, sb, addr, port, family == AF_INET || mapped, shared);
	if (family == AF_INET)
		set4(ctx, cfg->proxy_port);
	else
		set6(ctx, cfg->proxy_port, mapped);
	return 1;
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	v4_to_addr(ctx->user_ip4, addr);
	return decide(ctx, addr, AF_INET, 0);
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	v6_to_addr(ip6, addr);
	return decide(ctx, addr, AF_INET6, 0);
}

SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	v4_to_addr(ctx->user_ip4, addr);
	return decide(ctx, addr, AF_INET, 1);
}

SEC("cgroup/sendmsg6")
int sluice_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	v6_to_addr(ip6, addr);
	return decide(ctx, addr, AF_INET6, 1);
}

/* restore rewrites the peer address the program sees back to the original
 * destination it asked for. */
static __always_inline int restore(struct bpf_sock_addr *ctx, int family)
{
	if (!ctx->sk)
		return 1;
	struct orig *o = bpf_sk_storage_get(&orig_sk, ctx->sk, 0, 0);
	if (!o || !o->redirected)
		return 1;
	if (family == AF_INET) {
		if (!is_v4mapped(o->addr))
			return 1;
		__u32 ip4;
		__builtin_memcpy(&ip4, o->addr + 12, 4);
		ctx->user_ip4 = ip4;
	} else {
		__u32 w[4];
		__builtin_memcpy(w, o->addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

/* Only replies from the resolver are rewritten by recvmsg: a direct UDP peer
 * must keep its own address. */
static __always_inline int from_resolver4(struct bpf_sock_addr *ctx)
{
	__u64 sb = 0;
	struct sandbox_cfg *cfg = find_sandbox(&sb);
	if (!cfg)
		return 0;
	return ctx->user_ip4 == bpf_htonl(0x7f000001) && bpf_ntohs(ctx->user_port) == cfg->dns_port;
}

static __always_inline int from_resolver6(struct bpf_sock_addr *ctx)
{
	__u64 sb = 0;
	struct sandbox_cfg *cfg = find_sandbox(&sb);
	if (!cfg)
		return 0;
	__u8 addr[16];
	__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	v6_to_addr(ip6, addr);
	return is_resolver(addr, bpf_ntohs(ctx->user_port), cfg);
}

SEC("cgroup/recvmsg4")
int sluice_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (from_resolver4(ctx))
		restore(ctx, AF_INET);
	return 1;
}

SEC("cgroup/recvmsg6")
int sluice_recvmsg6(struct bpf_sock_addr *ctx)
{
	if (from_resolver6(ctx))
		restore(ctx, AF_INET6);
	return 1;
}

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore(ctx, AF_INET);
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore(ctx, AF_INET6);
}

SEC("cgroup/sock_create")
int sluice_sock_create(struct bpf_sock *ctx)
{
	__u64 sb = 0;
	struct sandbox_cfg *cfg = find_sandbox(&sb);
	__u8 none[16] = {};
	if (!cfg) {
		refuse(0, none, 0, ctx->protocol, REASON_UNKNOWN_SANDBOX, 0);
		return 0;
	}
	int ok = 1;
	if (ctx->family == AF_PACKET)
		ok = 0;
	if (ctx->family == AF_INET || ctx->family == AF_INET6) {
		if (ctx->type == SOCK_STREAM)
			ok = ctx->protocol == 0 || ctx->protocol == IPPROTO_TCP;
		else if (ctx->type == SOCK_DGRAM)
			ok = ctx->protocol == 0 || ctx->protocol == IPPROTO_UDP;
		else
			ok = 0;
	}
	if (!ok) {
		__u32 audit = cfg->flags & SB_AUDIT;
		refuse(sb, none, 0, ctx->protocol, REASON_SOCKET_TYPE, audit);
		return audit ? 1 : 0;
	}
	return 1;
}

static __always_inline int is_loopback(const __u8 a[16])
{
	if (is_v4mapped(a))
		return a[12] == 127;
	for (int i = 0; i < 15; i++)
		if (a[i])
			return 0;
	return a[15] == 1;
}

static __always_inline int is_wildcard(const __u8 a[16])
{
	for (int i = 12; i < 16; i++)
		if (a[i])
			return 0;
	return is_v4mapped(a) || (!a[0] && !a[1] && !a[2] && !a[3] && !a[4] && !a[5] && !a[6] &&
				  !a[7] && !a[8] && !a[9] && !a[10] && !a[11]);
}

static __always_inline int bind_check(struct bpf_sock_addr *ctx, __u8 addr[16], int family)
{
	__u64 sb = 0;
	struct sandbox_cfg *cfg = find_sandbox(&sb);
	if (!cfg)
		return 0;
	__u16 port = bpf_ntohs(ctx->user_port);
	if (port != 0 && (port == cfg->proxy_port || port == cfg->dns_port)) {
		refuse(sb, addr, port, sock_proto(ctx), REASON_BIND, 0);
		return 0;
	}
	/* Inbound: keep TCP listeners on loopback unless a listen rule names
	 * the port. Audit mode changes nothing. */
	if (ctx->type != SOCK_STREAM || (cfg->flags & SB_AUDIT) || is_loopback(addr))
		return 1;
	if (!is_wildcard(addr) && port == 0)
		return 1; /* a source address for an outgoing connection */
	struct listen_port_key lk = {};
	lk.sandbox = sb;
	lk.port = port;
	if (port != 0 && bpf_map_lookup_elem(&listen_ports, &lk))
		return 1;
	if (family == AF_INET)
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	else
		set6(ctx, port, is_v4mapped(addr));
	return 1;
}

SEC("cgroup/bind4")
int sluice_bind4(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	v4_to_addr(ctx->user_ip4, addr);
	return bind_check(ctx, addr, AF_INET);
}

SEC("cgroup/bind6")
int sluice_bind6(struct bpf_sock_addr *ctx)
{
	__u8 addr[16];
	__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	v6_to_addr(ip6, addr);
	return bind_check(ctx, addr, AF_INET6);
}

/* ---- source routing (see the header comment) ---- */

#define SOL_IP_ 0
#define SOL_IPV6_ 41
#define IP_OPTIONS_ 4
#define IP_RETOPTS_ 7
#define IPV6_2292DSTOPTS_ 4
#define IPV6_2292RTHDR_ 5
#define IPV6_2292PKTOPTIONS_ 6
#define IPV6_RTHDRDSTOPTS_ 55
#define IPV6_RTHDR_ 57
#define IPV6_DSTOPTS_ 59
#define PAGE_SIZE_ 4096

static __always_inline int routing_option(int level, int optname)
{
	if (level == SOL_IP_)
		return optname == IP_OPTIONS_ || optname == IP_RETOPTS_;
	if (level != SOL_IPV6_)
		return 0;
	switch (optname) {
	case IPV6_2292DSTOPTS_:
	case IPV6_2292RTHDR_:
	case IPV6_2292PKTOPTIONS_:
	case IPV6_RTHDRDSTOPTS_:
	case IPV6_RTHDR_:
	case IPV6_DSTOPTS_:
		return 1;
	}
	return 0;
}

SEC("cgroup/setsockopt")
int sluice_setsockopt(struct bpf_sockopt *ctx)
{
	/* Clearing an option (an empty value) stays allowed. */
	if (ctx->optlen > 0 && routing_option(ctx->level, ctx->optname)) {
		__u64 sb = 0;
		find_sandbox(&sb);
		__u8 none[16] = {};
		/* The counter's port is the option, its proto the level. */
		refuse(sb, none, (__u16)ctx->optname, (__u16)ctx->level, REASON_ROUTING_OPTION, 0);
		return 0;
	}
	/* A value beyond a page: let the kernel use the caller's own buffer
	 * (otherwise kernels before 6.5 fail the call with EFAULT). */
	if (ctx->optlen > PAGE_SIZE_)
		ctx->optlen = 0;
	return 1;
}

#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

/* routed_packet reports whether the packet (skb data starts at the IP
 * header in cgroup_skb programs) carries IPv4 options or an IPv6 routing
 * header, and sets dst to its IP destination (the first hop). */
static __always_inline int routed_packet(struct __sk_buff *skb, __u8 dst[16])
{
	if (skb->protocol == bpf_htons(ETH_P_IP_)) {
		__u8 vihl = 0;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
			return 0;
		if ((vihl & 0x0f) <= 5)
			return 0;
		__u32 d = 0;
		bpf_skb_load_bytes(skb, 16, &d, 4);
		v4_to_addr(d, dst);
		return 1;
	}
	if (skb->protocol != bpf_htons(ETH_P_IPV6_))
		return 0;
	__u8 nh = 0;
	if (bpf_skb_load_bytes(skb, 6, &nh, 1))
		return 0;
	__u32 off = 40;
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		__u8 h[2] = {};
		switch (nh) {
		case NEXTHDR_ROUTING:
			bpf_skb_load_bytes(skb, 24, dst, 16);
			return 1;
		case NEXTHDR_HOP:
		case NEXTHDR_DEST:
			if (bpf_skb_load_bytes(skb, off, h, 2))
				return 0;
			nh = h[0];
			off += ((__u32)h[1] + 1) * 8;
			break;
		case NEXTHDR_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, h, 2))
				return 0;
			nh = h[0];
			off += 8;
			break;
		case NEXTHDR_AUTH:
			if (bpf_skb_load_bytes(skb, off, h, 2))
				return 0;
			nh = h[0];
			off += ((__u32)h[1] + 2) * 4;
			break;
		default:
			return 0; /* upper layer (or no next header): no routing header */
		}
	}
	/* A chain deeper than any real packet: drop it rather than guess. */
	bpf_skb_load_bytes(skb, 24, dst, 16);
	return 1;
}

/* skb_sandbox finds the sandbox of a packet's socket (bpf_get_current_*
 * does not describe the sender in softirq context), as find_sandbox does:
 * a fence entry counts only when no sandbox below it claims the socket. */
static __always_inline __u64 skb_sandbox(struct __sk_buff *skb)
{
	__u64 fence_id = 0;
	for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
		__u64 cg = bpf_skb_ancestor_cgroup_id(skb, level);
		if (cg == 0)
			break;
		struct sandbox_cfg *cfg = bpf_map_lookup_elem(&sandboxes, &cg);
		if (!cfg)
			continue;
		if (cfg->flags & SB_FENCE) {
			if (!fence_id)
				fence_id = cg;
			continue;
		}
		return cg;
	}
	return fence_id;
}

/* refuse_skb counts and reports a refusal seen on egress. pid and comm are
 * the socket's creator's when connect recorded them, else empty. */
static __always_inline void refuse_skb(struct __sk_buff *skb, struct bpf_sock *sk,
				       const __u8 addr[16], __u16 port, __u16 proto, __u32 reason,
				       __u32 audit)
{
	__u64 sb = skb_sandbox(skb);
	count_refusal(sb, addr, port, proto, reason);
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->sandbox = sb;
	e->cgroup = bpf_skb_cgroup_id(skb);
	e->ts_ns = bpf_ktime_get_ns();
	e->reason = reason;
	__builtin_memcpy(e->addr, addr, 16);
	e->port = port;
	e->proto = proto;
	e->audit = audit;
	struct orig *o = sk ? bpf_sk_storage_get(&orig_sk, sk, 0, 0) : 0;
	if (o) {
		e->pid = o->pid;
		__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	}
	bpf_ringbuf_submit(e, 0);
}

/* ---- inbound (see the header comment) ---- */

/* inbound_verdict decides an accepted connection at its first packet out. */
static __always_inline __u32 inbound_verdict(struct __sk_buff *skb, struct bpf_sock *sk)
{
	/* The socket's addresses as the skb context exposes them. */
	/* Each field read on its own, unconditionally, 4 bytes at a time: the
	 * verifier refuses a context pointer clang offset once for several
	 * loads. */
	__u32 fam = skb->family;
	asm volatile("" ::: "memory");
	__u32 r4 = skb->remote_ip4;
	asm volatile("" ::: "memory");
	__u32 w0 = skb->remote_ip6[0];
	asm volatile("" ::: "memory");
	__u32 w1 = skb->remote_ip6[1];
	asm volatile("" ::: "memory");
	__u32 w2 = skb->remote_ip6[2];
	asm volatile("" ::: "memory");
	__u32 w3 = skb->remote_ip6[3];
	asm volatile("" ::: "memory");
	__u32 lport = skb->local_port;
	__u8 peer[16];
	if (fam == AF_INET) {
		v4_to_addr(r4, peer);
	} else {
		__u32 w[4] = {w0, w1, w2, w3};
		__builtin_memcpy(peer, w, 16);
	}
	if (is_loopback(peer))
		return INBOUND_ALLOWED;
	__u16 port = (__u16)lport; /* the listening port, host order */
	__u64 sb = skb_sandbox(skb);
	struct allow_key k = {};
	k.prefixlen = 64 + 128;
	__builtin_memcpy(k.sandbox, &sb, 8);
	__builtin_memcpy(k.addr, peer, 16);
	struct allow_val *v = bpf_map_lookup_elem(&listen_allow, &k);
	if (v) {
		if (!v->nports)
			return INBOUND_ALLOWED;
		for (int i = 0; i < MAX_PORTS; i++)
			if (i < v->nports && v->ports[i] == port)
				return INBOUND_ALLOWED;
	}
	struct sandbox_cfg *cfg = bpf_map_lookup_elem(&sandboxes, &sb);
	__u32 audit = cfg && (cfg->flags & SB_AUDIT);
	refuse_skb(skb, sk, peer, port, PROTO_TCP, REASON_INBOUND, audit);
	return audit ? INBOUND_ALLOWED : INBOUND_DENIED;
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		struct bpf_sock *sk = skops->sk;
		if (!sk)
			return 1;
		struct inbound *in = bpf_sk_storage_get(&inbound_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (in)
			in->state = INBOUND_PENDING;
		return 1;
	}
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB && skops->op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct orig *o = bpf_sk_storage_get(&orig_sk, sk, 0, 0);
	if (!o || !o->redirected)
		return 1;

	struct orig_key k = {};
	k.sandbox = record_sandbox(o);
	k.proto = PROTO_TCP;
	k.port = (__u16)skops->local_port;
	if (o->v4) {
		v4_to_addr(skops->local_ip4, k.addr);
	} else {
		/* local_ip6 allows 4-byte loads only: the barriers keep clang
		 * from merging them into wider ones. */
		__u32 w0 = skops->local_ip6[0];
		asm volatile("" ::: "memory");
		__u32 w1 = skops->local_ip6[1];
		asm volatile("" ::: "memory");
		__u32 w2 = skops->local_ip6[2];
		asm volatile("" ::: "memory");
		__u32 w3 = skops->local_ip6[3];
		__u32 w[4] = {w0, w1, w2, w3};
		__builtin_memcpy(k.addr, w, 16);
	}
	if (skops->op == BPF_SOCK_OPS_STATE_CB) {
		/* A connection that died before the proxy could take it (its
		 * SYN refused or lost, or reset): its record must not outlive
		 * it, or whoever connects to the listener later from the same
		 * client port would be served under it. A graceful close
		 * (from FIN_WAIT1/2, CLOSING, LAST_ACK) keeps the record: the
		 * connection may still wait in the listener's backlog, and the
		 * proxy consumes the record when it accepts. The port is
		 * reusable only after this point, so a later socket's record
		 * is never the one deleted. */
		__u32 old = skops->args[0];
		if (skops->args[1] == BPF_TCP_CLOSE &&
		    (old == BPF_TCP_SYN_SENT || old == BPF_TCP_ESTABLISHED || old == BPF_TCP_CLOSE_WAIT))
			bpf_map_delete_elem(&orig_by_tuple, &k);
		return 1;
	}
	bpf_map_update_elem(&orig_by_tuple, &k, o, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

SEC("cgroup_skb/egress")
int sluice_skb_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	__u8 hop[16] = {};
	if (routed_packet(skb, hop)) {
		refuse_skb(skb, sk, hop, 0, sk ? (__u16)sk->protocol : 0, REASON_ROUTED_PACKET, 0);
		return 0;
	}
	if (sk && sk->protocol == IPPROTO_TCP) {
		struct inbound *in = bpf_sk_storage_get(&inbound_sk, sk, 0, 0);
		if (in && in->state == INBOUND_PENDING)
			in->state = inbound_verdict(skb, sk);
		if (in && in->state == INBOUND_DENIED)
			return 0;
		return 1;
	}
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	struct orig *o = bpf_sk_storage_get(&orig_sk, sk, 0, 0);
	if (!o || !o->redirected || o->port != 53)
		return 1;
	struct orig_key k = {};
	k.sandbox = record_sandbox(o);
	k.port = (__u16)sk->src_port;
	k.proto = PROTO_UDP;
	struct orig *cur = bpf_map_lookup_elem(&dns_origin, &k);
	if (cur && cur->pid == o->pid)
		return 1;
	bpf_map_update_elem(&dns_origin, &k, o, BPF_ANY);
	return 1;
}
