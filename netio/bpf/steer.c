// tapwire's XDP program: steers mirror traffic addressed to this host into AF_XDP sockets and
// passes everything else to the kernel untouched.
//
// Mirror traffic is GRE, or UDP to a mirror port, whose destination is one of the (address,
// protocol, port) triples user space put in `tw_dests` (IPv4 as ::ffff:a.b.c.d; port 0 for
// GRE). Such a frame goes to the AF_XDP socket of the queue it arrived on (`tw_xsks`), with its
// receive time (bpf_ktime_get_ns) and a magic word in 16 bytes of XDP metadata in front of it.
// With no socket on that queue, bpf_redirect_map's fallback passes it to the kernel.
//
// Outer fragments are steered too, so that a sender's packets stay on one input, in order, and
// user space reassembles them (tapwire's pipeline has bounded reassembly):
// - GRE fragments (IPv4 MF or offset, IPv6 fragment header) to a steered address, all of them:
//   every fragment names the protocol.
// - UDP fragments as their datagram's first fragment to arrive decides, remembered in
//   `tw_frags` by (source, destination, protocol, IP id) for FRAG_WINDOW_NS after the
//   datagram's latest fragment: a first fragment (the only one with the port) to a steered
//   address and port is steered, with every later fragment of its datagram; a non-first
//   fragment that arrives before its first one is passed, and so is the rest of its datagram
//   (its first fragment too), so that the kernel reassembles it for the UDP socket. Either way
//   a datagram's fragments stay together, and the host's own fragmented UDP to the address
//   (another port) is passed whole. Steering every UDP fragment to the address would take
//   that traffic.
// GRE fragments go through the same memory, so that a datagram whose first fragment to arrive
// is too long for a chunk (a jumbo underlay) is passed whole, not split between the kernel
// and user space.
// Frames too long for a UMEM chunk pass, for the raw GRE and UDP sockets. Counted: fragments
// to a steered address in `C_FRAGMENT`, and also in `C_STEERED` when steered.
//
// Up to two VLAN tags (802.1Q, 802.1ad) in the frame are skipped. IPv6 extension headers other
// than the fragment header are not walked: such packets pass, and the sockets take them.
//
// Self-contained on purpose (no kernel or libbpf headers): it builds with nothing but clang.
// Maps use the legacy `maps` section layout (no BTF needed).

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

// include/uapi/linux/bpf.h
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

enum { XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT };
enum { MAP_HASH = 1, MAP_PERCPU_ARRAY = 6, MAP_LRU_HASH = 9, MAP_XSKMAP = 17 };

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;
static long (*bpf_xdp_adjust_meta)(struct xdp_md *ctx, int delta) = (void *)54;

// The legacy map definition the loader reads from the `maps` section.
struct map_def {
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 flags;
	__u32 id;
	__u32 pinning;
};

// Must match tapwire-netio's xdp.rs.
#define MAX_QUEUES 256
#define MAX_DESTS 4096
// UDP datagrams whose fragments are in flight, remembered (least recently used evicted first).
#define MAX_FRAGS 8192
// How long a datagram's verdict holds after its latest fragment: fragments of one datagram
// arrive microseconds apart; a 16-bit IPv4 id repeats only after 65536 datagrams between the
// same two addresses.
#define FRAG_WINDOW_NS 100000000ULL
#define META_MAGIC 0x7461707769726521ULL /* "tapwire!" */
// A 4096-byte UMEM chunk less the kernel's 256 bytes of headroom: a longer frame would not fit
// and the socket would drop it, so it passes to the kernel (and the raw socket) instead.
#define MAX_FRAME_BYTES 3840
enum { C_STEERED, C_NO_SOCKET, C_FRAGMENT, C_TOO_BIG, C_PASSED, N_COUNTERS };

struct dest_key {
	__u8 addr[16];
	__u16 port; // network order; 0 for GRE, and for "any UDP port" (fragments)
	__u8 proto;
	__u8 pad;
};

// One outer UDP datagram, by its fragments' common fields (IPv4 ids widened to 32 bits).
struct frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

struct frag_verdict {
	__u64 seen_ns; // the datagram's latest fragment
	__u32 steer;
	__u32 pad;
};

struct meta {
	__u64 ts_ns;
	__u64 magic;
};

struct map_def SEC("maps") tw_xsks = {
	.type = MAP_XSKMAP,
	.key_size = 4,
	.value_size = 4,
	.max_entries = MAX_QUEUES,
};

struct map_def SEC("maps") tw_dests = {
	.type = MAP_HASH,
	.key_size = sizeof(struct dest_key),
	.value_size = 4,
	.max_entries = MAX_DESTS,
};

struct map_def SEC("maps") tw_frags = {
	.type = MAP_LRU_HASH,
	.key_size = sizeof(struct frag_key),
	.value_size = sizeof(struct frag_verdict),
	.max_entries = MAX_FRAGS,
};

struct map_def SEC("maps") tw_counters = {
	.type = MAP_PERCPU_ARRAY,
	.key_size = 4,
	.value_size = 8,
	.max_entries = N_COUNTERS,
};

#define BE16(x) ((__u16)(((x) >> 8) | (((x) & 0xff) << 8)))
#define ETH_P_IP BE16(0x0800)
#define ETH_P_IPV6 BE16(0x86dd)
#define ETH_P_8021Q BE16(0x8100)
#define ETH_P_8021AD BE16(0x88a8)
#define IPPROTO_UDP 17
#define IPPROTO_GRE 47
#define IPPROTO_FRAGMENT 44

INLINE int count(__u32 which, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&tw_counters, &which);
	if (n)
		*n += 1;
	return verdict;
}

INLINE int is_dest(struct dest_key *key)
{
	return bpf_map_lookup_elem(&tw_dests, key) != 0;
}

// Whether a fragment to a steered address is steered: as its datagram's first fragment to
// arrive decided, remembered for FRAG_WINDOW_NS after the datagram's latest fragment (see the
// top of this file). `want`: this fragment alone says steer (GRE; a UDP first fragment to a
// steered port). `decides`: it knows the port, so its own view outranks a remembered steer
// (a stale entry of an earlier datagram with the same id). A remembered pass always holds:
// the kernel has part of the datagram.
INLINE int steer_fragment(struct frag_key *fk, int want, int decides, int too_big)
{
	__u64 now = bpf_ktime_get_ns();
	struct frag_verdict *v = bpf_map_lookup_elem(&tw_frags, fk);
	int steer;
	if (!v || now - v->seen_ns >= FRAG_WINDOW_NS)
		steer = want && !too_big;
	else if (!v->steer)
		steer = 0;
	else
		steer = decides ? want : 1;
	struct frag_verdict nv = {.seen_ns = now, .steer = steer};
	bpf_map_update_elem(&tw_frags, fk, &nv, 0);
	return steer;
}

SEC("xdp")
int tapwire_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct dest_key key = {};
	__u8 *p = data;
	__u16 ethertype;

	if (p + 14 > (__u8 *)end)
		return count(C_PASSED, XDP_PASS);
	ethertype = *(__u16 *)(p + 12);
	p += 14;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD)
			break;
		if (p + 4 > (__u8 *)end)
			return count(C_PASSED, XDP_PASS);
		ethertype = *(__u16 *)(p + 2);
		p += 4;
	}

	__u8 proto;
	int fragment, first;
	struct frag_key fk = {};
	if (ethertype == ETH_P_IP) {
		if (p + 20 > (__u8 *)end)
			return count(C_PASSED, XDP_PASS);
		__u32 ihl = (p[0] & 0x0f) * 4;
		if (ihl < 20)
			return count(C_PASSED, XDP_PASS);
		proto = p[9];
		// MF set or a fragment offset: bits 0x3fff of the flags/offset word.
		fragment = ((p[6] & 0x3f) | p[7]) != 0;
		first = ((p[6] & 0x1f) | p[7]) == 0;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		key.addr[12] = p[16];
		key.addr[13] = p[17];
		key.addr[14] = p[18];
		key.addr[15] = p[19];
		if (fragment) {
			fk.src[10] = 0xff;
			fk.src[11] = 0xff;
			__builtin_memcpy(fk.src + 12, p + 12, 4);
			__builtin_memcpy(fk.dst, key.addr, 16);
			fk.id = *(__u16 *)(p + 4);
		}
		p += ihl;
	} else if (ethertype == ETH_P_IPV6) {
		if (p + 40 > (__u8 *)end)
			return count(C_PASSED, XDP_PASS);
		proto = p[6];
		fragment = 0;
		first = 1;
		__builtin_memcpy(key.addr, p + 24, 16);
		if (proto == IPPROTO_FRAGMENT) {
			__builtin_memcpy(fk.src, p + 8, 16);
			__builtin_memcpy(fk.dst, p + 24, 16);
		}
		p += 40;
		if (proto == IPPROTO_FRAGMENT) {
			if (p + 8 > (__u8 *)end)
				return count(C_PASSED, XDP_PASS);
			proto = p[0];
			fragment = 1;
			// The offset is the upper 13 bits of bytes 2-3.
			first = ((p[2] << 5) | (p[3] >> 3)) == 0;
			fk.id = *(__u32 *)(p + 4);
			p += 8;
		}
	} else {
		return count(C_PASSED, XDP_PASS);
	}

	if (proto != IPPROTO_GRE && proto != IPPROTO_UDP)
		return count(C_PASSED, XDP_PASS);
	key.proto = proto;
	if (fragment) {
		// The address's entry (port 0; for UDP, "some port of this address").
		if (!is_dest(&key))
			return count(C_PASSED, XDP_PASS);
		count(C_FRAGMENT, 0);
	}
	if (proto == IPPROTO_UDP && first) {
		if (p + 8 > (__u8 *)end)
			return count(C_PASSED, XDP_PASS);
		key.port = *(__u16 *)(p + 2);
		if (key.port == 0)
			return count(C_PASSED, XDP_PASS);
	}
	int too_big = (long)end - (long)data > MAX_FRAME_BYTES;
	if (fragment) {
		fk.proto = proto;
		int udp_first = proto == IPPROTO_UDP && first;
		int want = proto == IPPROTO_GRE || (udp_first && is_dest(&key));
		if (!steer_fragment(&fk, want, udp_first, too_big))
			return count(C_PASSED, XDP_PASS);
	} else if (!is_dest(&key)) {
		return count(C_PASSED, XDP_PASS);
	}
	if (too_big)
		return count(C_TOO_BIG, XDP_PASS);

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct meta)) == 0) {
		struct meta *m = (void *)(long)ctx->data_meta;
		if ((void *)(m + 1) <= (void *)(long)ctx->data) {
			m->ts_ns = bpf_ktime_get_ns();
			m->magic = META_MAGIC;
		}
	}
	long verdict = bpf_redirect_map(&tw_xsks, ctx->rx_queue_index, XDP_PASS);
	return count(verdict == XDP_REDIRECT ? C_STEERED : C_NO_SOCKET, verdict);
}

// The kernel wants a GPL-compatible licence string for some helpers; this program uses none of
// them, and "Dual MIT/GPL" keeps the project's MIT terms.
char _license[] SEC("license") = "Dual MIT/GPL";
