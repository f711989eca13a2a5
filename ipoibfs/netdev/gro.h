/* GRO/LRO of TCP segments, in C, for the flow table's loop (netdev/flows.c): the rules of
 * wire/lro.py (dev_gro_receive, inet_gro_receive, ipv6_gro_receive, tcp_gro_receive and
 * tcp_gro_complete), without I/O. A frame is a virtio_net_hdr and an IP packet. */
#ifndef IPOIBFS_GRO_H
#define IPOIBFS_GRO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define GRO_VNET 10         /* struct virtio_net_hdr */
#define GRO_MAX_SIZE 65536  /* GRO_LEGACY_MAX_SIZE */
#define GRO_MAX_FLOWS 8     /* MAX_GRO_SKBS */
#define GRO_MAX_SEGS 64     /* a flow's segments at most: a batch's frames */
#define GRO_KEY 44          /* version, addresses, ports, IPv6 flow word */
#define GRO_HEADER (GRO_VNET + 40 + 60) /* a merged packet's headers at most */

enum gro_kind {
    GRO_NONE,    /* not TCP GRO looks at: delivered as it came */
    GRO_REFUSED, /* TCP GRO refuses: its flow goes first, then it, as it came */
    GRO_SEGMENT, /* a segment that may join a flow */
};

struct gro_seg {
    const uint8_t *frame;
    size_t len;             /* of the frame */
    int ihl, thlen;         /* IP and TCP header lengths */
    uint32_t seq, ack, flag_word;
    uint32_t ip_match;      /* TTL, TOS, DF (IPv4); traffic class, hop limit (IPv6) */
    int ip_id;              /* -1 for IPv6 */
    int df;
    size_t paylen;
    uint8_t key[GRO_KEY];
    int keylen;
};

struct gro_flow {
    struct gro_seg first;
    const uint8_t *payload[GRO_MAX_SEGS];
    uint16_t paylen[GRO_MAX_SEGS];
    int count;
    uint32_t flags;         /* FIN and PSH of the segments merged in */
    uint32_t next_seq;
    size_t length;          /* IP length so far */
    int fixed_id;
};

/* What GRO makes of a frame; a segment's fields point into it. */
enum gro_kind gro_parse(const uint8_t *frame, size_t len, struct gro_seg *seg);
/* The flow key of a refused frame (as gro_parse builds it), its length; 0: none. */
int gro_flow_key(const uint8_t *frame, size_t len, uint8_t key[GRO_KEY]);
/* Whether the segment may join the held flow (tcp_gro_receive's flush conditions). */
int gro_joins(const struct gro_flow *flow, const struct gro_seg *seg);
void gro_start(struct gro_flow *flow, const struct gro_seg *seg);
/* Merge a segment that joins; 1 when the flow is then complete (short or flushing). */
int gro_append(struct gro_flow *flow, const struct gro_seg *seg);
/* Whether a segment that starts no flow goes up at once (no payload, or flushing flags). */
int gro_alone(const struct gro_seg *seg);
/* tcp_gro_complete: the flow as iovecs (at most GRO_MAX_SEGS + 1), headers in `header`. */
int gro_complete(const struct gro_flow *flow, uint8_t header[GRO_HEADER], struct iovec *iov);

#endif
