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

/* sandbox flags */
#define SB_AUDIT 1 /* record would-be refusals, refuse nothing */
#define SB_FENCE 2 /* a fence (sluice daemon --fence): it decides only for
		    * cgroups below it that no other entry claims */

/* allow entry flags */
#define AL_DIRECT 1 /* kernel allow, no proxy */
#define AL_DENY 2   /* refused even if a wider prefix allows */
#define AL_STATIC 4 /* from a policy CIDR (not learned from DNS) */
#define AL_UDP 8    /* UDP allowed too (direct rules only) */

/* refusal reasons (counters and events) */
enum reason {
	REASON_NOT_ALLOWED = 1, /* destination not in the allowlist */
	REASON_EXPIRED = 2,     /* allowlist entry past its TTL */
	REASON_PORT = 3,        /* port not allowed by the rule */
	REASON_UDP = 4,         /* UDP other than DNS */
	REASON_METADATA = 5,    /* cloud metadata address */
	REASON_SOCKET = 6,      /* socket type refused (raw, MPTCP, SCTP, ...) */
	REASON_UNKNOWN_SANDBOX = 7, /* no registered sandbox above the cgroup */
	REASON_DENY_RULE = 8,   /* a deny rule names the destination */
	REASON_BIND = 9,        /* bind to one of sluice's own ports */
};

#define PROTO_TCP 6
#define PROTO_UDP 17

struct sandbox_cfg {
	__u16 proxy_port; /* host order */
	__u16 dns_port;   /* host order */
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
	__u8 pad[7];
};

struct orig_key {
	__u64 sandbox;
	__u8 addr[16]; /* client's local address, v4-mapped for IPv4 */
	__u16 port;    /* client's local port, host order */
	__u16 proto;
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
