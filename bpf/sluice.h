/* SPDX-License-Identifier: GPL-2.0 */
/* Shared definitions of sluice's eBPF programs. Every struct here reaches Go
 * through bpf2go -type; never copy one by hand. */
#ifndef SLUICE_H
#define SLUICE_H

#include <linux/types.h>

#define MAX_SANDBOXES 16384
#define MAX_ALLOW 524288
#define MAX_ORIG 65536
#define MAX_COUNTERS 65536
#define MAX_PORTS 8
#define MAX_CGROUP_DEPTH 32
#define MAX_LISTEN 65536
#define MAX_EXT_HEADERS 8 /* IPv6 extension headers walked on egress */

/* Flag enums reach Go through bpf2go -type. enum reason is read by Go from
 * the object's BTF, and a refusal reason is named after its enumerator
 * (REASON_NOT_ALLOWED renders "not_allowed"), so a new reason is one line
 * here plus its use in a program: no Go edit. */

/* sandbox flags (sandbox_cfg.flags) */
enum sandbox_flag {
	SB_AUDIT = 1, /* record would-be refusals, refuse nothing */
	SB_FENCE = 2, /* a fence (sluice daemon --fence): it decides only for
		       * cgroups below it that no other entry claims */
	SB_SHARED = 4, /* the sandbox's proxy is the daemon's shared listener
			* (host network namespace): its connection and DNS
			* records are keyed by sandbox 0 and name the sandbox
			* in their value, and its IPv6 UDP DNS goes to the
			* shared resolver socket on [::1]:proxy_port (UDP) */
};

/* allow entry flags (allow_val.flags) */
enum allow_flag {
	AL_DIRECT = 1, /* kernel allow, no proxy */
	AL_DENY = 2,   /* refused even if a wider prefix allows */
	AL_STATIC = 4, /* from a policy CIDR (not learned from DNS) */
	AL_UDP = 8,    /* UDP allowed too (direct rules only) */
};

/* refusal reasons (counters and events) */
enum reason {
	REASON_NOT_ALLOWED = 1,     /* destination not in the allowlist */
	REASON_EXPIRED = 2,         /* allowlist entry past its TTL */
	REASON_PORT = 3,            /* port not allowed by the rule */
	REASON_UDP = 4,             /* UDP other than DNS */
	REASON_METADATA = 5,        /* cloud metadata address */
	REASON_SOCKET_TYPE = 6,     /* socket type refused (raw, MPTCP, SCTP, ...) */
	REASON_UNKNOWN_SANDBOX = 7, /* no registered sandbox above the cgroup */
	REASON_DENY_RULE = 8,       /* a deny rule names the destination */
	REASON_BIND = 9,            /* bind to one of sluice's own ports */
	REASON_ROUTING_OPTION = 10, /* setsockopt of an IPv6 routing/destination header or IPv4 options */
	REASON_ROUTED_PACKET = 11,  /* packet with an IPv6 routing header or IPv4 options dropped */
	REASON_INBOUND = 12,        /* data on a connection accepted from a peer no listen rule names */
	REASON_OWN_LISTENER = 17,   /* connect/send straight to sluice's proxy or resolver, not redirected */
	/* Counted by the daemon, not by a program: its resource fences. */
	REASON_FENCE_CONNECTIONS = 13,          /* concurrent proxied connections */
	REASON_FENCE_UPSTREAM_CONNECTIONS = 14, /* concurrent upstream connections */
	REASON_FENCE_REQUEST_HEAD_BYTES = 15,   /* bytes of unfinished request heads */
	REASON_FENCE_DNS_QPS = 16,              /* DNS queries per second */
};

#define PROTO_TCP 6
#define PROTO_UDP 17

struct sandbox_cfg {
	__u16 proxy_port; /* host order; TCP (port 53 too) at 127.0.0.1 and ::1 */
	__u16 dns_port;   /* host order; UDP at 127.0.0.1, and ::1 unless SB_SHARED */
	__u32 flags;
};

struct allow_key {
	__u32 prefixlen; /* bits of sandbox (64) + addr */
	__u8 sandbox[8]; /* cgroup id, native byte order */
	__u8 addr[16];   /* IPv4 as ::ffff:a.b.c.d */
};

struct allow_val {
	__u64 expires_ns; /* CLOCK_MONOTONIC; 0 = never */
	__u32 flags;
	__u16 nports;
	__u16 ports[MAX_PORTS]; /* host order */
	__u16 pad;
};

/* The original destination of a redirected socket. */
struct orig {
	__u64 sandbox;
	__u8 addr[16];
	__u16 port; /* host order */
	__u16 redirected; /* 1: redirected to the proxy or resolver */
	__u32 pid;
	__u64 cgroup;
	__u8 comm[16];
	__u8 v4; /* the redirect went to an IPv4 (or v4-mapped) address */
	__u8 shared; /* the sandbox had SB_SHARED: records are keyed by sandbox 0 */
	__u8 pad[6];
};

struct orig_key {
	__u64 sandbox; /* 0 for a sandbox with SB_SHARED */
	__u8 addr[16]; /* client's local address, v4-mapped for IPv4 */
	__u16 port;    /* client's local port, host order */
	__u16 proto;
	__u32 pad;
};

/* listen_ports: the ports a sandbox may listen on beyond loopback. */
struct listen_port_key {
	__u64 sandbox;
	__u16 port; /* host order */
	__u16 pad[3];
};

/* The verdict on a passively established (accepted) TCP connection, kept in
 * socket-local storage. */
enum inbound_state {
	INBOUND_PENDING = 1, /* accepted; the peer is checked at the first packet out */
	INBOUND_ALLOWED = 2,
	INBOUND_DENIED = 3, /* every packet out is dropped */
};

struct inbound {
	__u32 state;
	__u32 pad;
};

struct counter_key {
	__u64 sandbox;
	__u8 addr[16];
	__u16 port;
	__u16 proto;
	__u32 reason;
};

struct counter_val {
	__u64 count;
	__u64 last_ns;
};

struct event {
	__u64 sandbox;
	__u64 cgroup;
	__u64 ts_ns;
	__u32 pid;
	__u32 reason;
	__u8 addr[16];
	__u16 port;
	__u16 proto;
	__u32 audit; /* 1: would have been refused (audit mode) */
	__u8 comm[16];
};

#endif
