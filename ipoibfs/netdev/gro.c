/* GRO/LRO of TCP segments (gro.h): wire/lro.py's rules, for the flow table's loop. The
 * unit tests hold the two to the same output (tests/unit/test_flows_gro.py). */
#include "gro.h"

#include <string.h>

#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define F_NEEDS_CSUM 1
#define F_DATA_VALID 2
#define IPPROTO_TCP 6
#define IP_DF 0x4000
#define TCP_CSUM_OFFSET 16
#define FLAG_CWR 0x00800000u
#define FLAG_URG 0x00200000u
#define FLAG_PSH 0x00080000u
#define FLAG_RST 0x00040000u
#define FLAG_SYN 0x00020000u
#define FLAG_FIN 0x00010000u
#define FLUSH_FLAGS (FLAG_URG | FLAG_PSH | FLAG_RST | FLAG_SYN | FLAG_FIN)
#define MERGE_FLAGS (FLAG_CWR | FLAG_FIN | FLAG_PSH)

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* The ones' complement sum of big-endian 16-bit words (an odd last byte padded), unfolded. */
static uint64_t sum16(const uint8_t *p, size_t n, uint64_t sum)
{
    for (; n >= 2; p += 2, n -= 2)
        sum += be16(p);
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint32_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint32_t)sum;
}

/* wire/lro.py's _checksum_valid: the sum folds to 0xFFFF (or the data is all zeros). */
static int valid(uint64_t sum)
{
    uint32_t folded = fold(sum);
    return folded == 0xFFFF || folded == 0;
}

/* The pseudo-header's sum for a TCP length. */
static uint64_t pseudo(const uint8_t *packet, int v4, size_t tcp_len)
{
    if (v4)
        return sum16(packet + 12, 8, 0) + IPPROTO_TCP + tcp_len;
    return sum16(packet + 8, 32, 0) + (tcp_len >> 16) + (tcp_len & 0xFFFF) + IPPROTO_TCP;
}

int gro_flow_key(const uint8_t *frame, size_t len, uint8_t key[GRO_KEY])
{
    const uint8_t *p = frame + GRO_VNET;
    size_t plen = len - GRO_VNET;
    if (plen >= 20 && p[0] >> 4 == 4 && p[9] == IPPROTO_TCP) {
        size_t ihl = (size_t)(p[0] & 0xF) * 4, ports = plen > ihl ? plen - ihl : 0;
        if (ports > 4)
            ports = 4;
        key[0] = 4;
        memcpy(key + 1, p + 12, 8);
        memcpy(key + 9, p + ihl, ports); /* shorter when cut, as Python's slice is */
        return 9 + (int)ports;
    }
    if (plen >= 44 && p[0] >> 4 == 6 && p[6] == IPPROTO_TCP) {
        uint32_t word = be32(p) & 0xF00FFFFF;
        key[0] = 6;
        memcpy(key + 1, p + 8, 36);
        memcpy(key + 37, &word, 4);
        return 41;
    }
    return 0;
}

enum gro_kind gro_parse(const uint8_t *f, size_t len, struct gro_seg *s)
{
    const uint8_t *p = f + GRO_VNET;
    size_t plen = len - GRO_VNET, ihl;
    uint64_t sum;
    int v4;
    if (len < GRO_VNET || plen < 20)
        return GRO_NONE;
    if (f[1] != GSO_NONE)
        return GRO_REFUSED; /* a super-packet */
    v4 = p[0] >> 4 == 4;
    if (v4) {
        uint32_t frag;
        ihl = (size_t)(p[0] & 0xF) * 4;
        if (p[9] != IPPROTO_TCP || ihl < 20 || plen < ihl + 20)
            return GRO_NONE;
        if (ihl != 20)
            return GRO_REFUSED;
        frag = be16(p + 6);
        if ((frag & ~(uint32_t)IP_DF) || be16(p + 2) != plen || !valid(sum16(p, 20, 0)))
            return GRO_REFUSED;
        s->ip_match = (uint32_t)p[8] << 24 | (uint32_t)p[1] << 16 | (frag & IP_DF);
        s->df = !!(frag & IP_DF);
        s->ip_id = (int)be16(p + 4);
    } else if (p[0] >> 4 == 6) {
        ihl = 40;
        if (plen < 60 || p[6] != IPPROTO_TCP)
            return GRO_NONE;
        if (be16(p + 4) != plen - 40)
            return GRO_REFUSED;
        s->ip_match = ((be32(p) >> 20) & 0xFF) << 8 | p[7];
        s->df = 1;
        s->ip_id = -1;
    } else {
        return GRO_NONE;
    }
    s->thlen = (p[ihl + 12] >> 4) * 4;
    if (s->thlen < 20 || plen < ihl + (size_t)s->thlen)
        return GRO_REFUSED;
    if (!(f[0] & (F_NEEDS_CSUM | F_DATA_VALID))) {
        sum = sum16(p + ihl, plen - ihl, pseudo(p, v4, plen - ihl));
        if (!valid(sum))
            return GRO_REFUSED; /* the stack drops it */
    }
    s->frame = f;
    s->len = len;
    s->ihl = (int)ihl;
    s->seq = be32(p + ihl + 4);
    s->ack = be32(p + ihl + 8);
    s->flag_word = be32(p + ihl + 12);
    s->paylen = plen - ihl - (size_t)s->thlen;
    s->keylen = gro_flow_key(f, len, s->key);
    return GRO_SEGMENT;
}

int gro_joins(const struct gro_flow *fl, const struct gro_seg *seg)
{
    const struct gro_seg *first = &fl->first;
    const uint8_t *a = first->frame + GRO_VNET + first->ihl + 20;
    const uint8_t *b = seg->frame + GRO_VNET + seg->ihl + 20;
    if (seg->flag_word & FLAG_CWR)
        return 0;
    if ((seg->flag_word ^ first->flag_word) & ~MERGE_FLAGS)
        return 0; /* other flags, data offset or window differ */
    if (seg->ack != first->ack || seg->ip_match != first->ip_match)
        return 0;
    if (memcmp(a, b, (size_t)first->thlen - 20))
        return 0; /* options, timestamps included */
    if (first->ip_id >= 0 && seg->ip_id >= 0) {
        int offset = (seg->ip_id - first->ip_id) & 0xFFFF;
        int fixed = fl->fixed_id || (fl->count == 1 && first->df && offset == 0);
        if (offset != (fixed ? 0 : fl->count))
            return 0;
    }
    if (seg->paylen == 0 || seg->paylen > first->paylen)
        return 0;
    if (seg->seq != fl->next_seq)
        return 0;
    return fl->length + seg->paylen < GRO_MAX_SIZE && fl->count < GRO_MAX_SEGS;
}

static const uint8_t *payload_of(const struct gro_seg *seg)
{
    return seg->frame + GRO_VNET + seg->ihl + seg->thlen;
}

void gro_start(struct gro_flow *fl, const struct gro_seg *seg)
{
    fl->first = *seg;
    fl->payload[0] = payload_of(seg);
    fl->paylen[0] = (uint16_t)seg->paylen;
    fl->count = 1;
    fl->flags = 0;
    fl->next_seq = seg->seq + (uint32_t)seg->paylen;
    fl->length = seg->len - GRO_VNET;
    fl->fixed_id = 0;
}

int gro_append(struct gro_flow *fl, const struct gro_seg *seg)
{
    if (fl->count == 1 && fl->first.df && seg->ip_id == fl->first.ip_id)
        fl->fixed_id = 1;
    fl->payload[fl->count] = payload_of(seg);
    fl->paylen[fl->count] = (uint16_t)seg->paylen;
    fl->count++;
    fl->flags |= seg->flag_word & (FLAG_FIN | FLAG_PSH);
    fl->next_seq = seg->seq + (uint32_t)seg->paylen;
    fl->length += seg->paylen;
    return seg->paylen < fl->first.paylen || (seg->flag_word & FLUSH_FLAGS);
}

int gro_alone(const struct gro_seg *seg)
{
    return seg->paylen == 0 || (seg->flag_word & FLUSH_FLAGS);
}

int gro_complete(const struct gro_flow *fl, uint8_t h[GRO_HEADER], struct iovec *iov)
{
    const struct gro_seg *first = &fl->first;
    const uint8_t *p = first->frame + GRO_VNET;
    size_t ihl = (size_t)first->ihl, thlen = (size_t)first->thlen;
    size_t tcp_len = fl->length - ihl;
    uint8_t *ip = h + GRO_VNET, *tcp = ip + ihl;
    uint32_t gso, check, mss = (uint32_t)first->paylen;
    int v4 = ihl == 20;
    if (fl->count == 1) {
        iov[0].iov_base = (void *)first->frame;
        iov[0].iov_len = first->len;
        return 1;
    }
    memcpy(ip, p, ihl + thlen);
    tcp[13] |= (uint8_t)(fl->flags >> 16);
    if (v4) {
        put16(ip + 2, (uint32_t)fl->length);
        put16(ip + 10, 0);
        put16(ip + 10, ~fold(sum16(ip, 20, 0)) & 0xFFFF);
        gso = GSO_TCPV4;
    } else {
        put16(ip + 4, (uint32_t)tcp_len);
        gso = GSO_TCPV6;
    }
    if (first->flag_word & FLAG_CWR)
        gso |= GSO_ECN;
    check = fold(pseudo(ip, v4, tcp_len));
    put16(tcp + TCP_CSUM_OFFSET, check);
    /* struct virtio_net_hdr, little-endian: flags, gso_type, hdr_len, gso_size,
     * csum_start, csum_offset */
    h[0] = F_NEEDS_CSUM;
    h[1] = (uint8_t)gso;
    h[2] = (uint8_t)(ihl + thlen);
    h[3] = (uint8_t)((ihl + thlen) >> 8);
    h[4] = (uint8_t)mss;
    h[5] = (uint8_t)(mss >> 8);
    h[6] = (uint8_t)ihl;
    h[7] = 0;
    h[8] = TCP_CSUM_OFFSET;
    h[9] = 0;
    iov[0].iov_base = h;
    iov[0].iov_len = GRO_VNET + ihl + thlen;
    for (int i = 0; i < fl->count; i++) {
        iov[i + 1].iov_base = (void *)fl->payload[i];
        iov[i + 1].iov_len = fl->paylen[i];
    }
    return fl->count + 1;
}
