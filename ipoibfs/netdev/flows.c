/* The netdev's flow offload: the reader thread's loop, in C, for the packets the driver has
 * programmed it to send on its own (netdev/flows.py). A TUN's read gives a packet with its
 * virtio_net_hdr; a packet to a programmed destination is written into that peer's sink and
 * counted, on the peer's placement page and as sent, with the driver's own rules
 * (Neighbours.xmit_fast, UdRoute and PlaceCell.send, RcRoute.send). Anything else goes back
 * to Python, whole, in the order it came.
 *
 * The table is the driver's to program (install, clear, forget) from another thread: a
 * mutex guards it, and a packet is looked up and sent under it, so that once `clear` or
 * `forget` returns no packet goes where an entry said. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VNET 10           /* struct virtio_net_hdr */
#define GSO_NONE 0
#define IPOIB_ENCAP_LEN 4
#define IPPROTO_TCP 6
#define IPPROTO_ICMPV6 58
#define REVOKED_AT 24     /* fabric/placement.py: the receiver's revocation byte */
#define OFFLOAD_AT 40     /* fabric/placement.py: this loop's packets, bytes, stamp */
#define SLOTS 1024        /* a power of two */
#define MAX_ENTRIES 768   /* beyond this, install refuses: the packets go through Python */
#define BUFFER 65536

enum { EMPTY, LIVE, GONE };
enum { KIND_UD = 1, KIND_RC = 2 }; /* fabric/placement.py: FLOW_UD, FLOW_RC */

struct entry {
    uint8_t state, keylen, kind, gro;
    uint8_t key[16];
    int sink;
    uint32_t limit;
    uint8_t *page;
    const volatile uint8_t *port_ok;
    uint64_t uses;
};

struct table {
    int fd;
    const volatile uint8_t *host_ok;
    pthread_mutex_t lock;
    uint64_t generation;
    int live, taken; /* LIVE entries; LIVE and GONE slots */
    uint64_t tx_packets, tx_bytes;
    struct entry slots[SLOTS];
    uint8_t buf[BUFFER];
};

static uint32_t hash(const uint8_t *key, int len)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < len; i++)
        h = (h ^ key[i]) * 16777619u;
    return h;
}

static struct entry *find(struct table *t, const uint8_t *key, int len)
{
    for (uint32_t i = hash(key, len), n = 0; n < SLOTS; i++, n++) {
        struct entry *e = &t->slots[i & (SLOTS - 1)];
        if (e->state == EMPTY)
            return NULL;
        if (e->state == LIVE && e->keylen == len && !memcmp(e->key, key, len))
            return e;
    }
    return NULL;
}

/* ipoib's tcp_segment (driver/ib.py): what GRO may hold, left to Python. */
static int tcp_segment(const uint8_t *f, size_t n)
{
    size_t tcp;
    if (f[1] != GSO_NONE || n < VNET + 40)
        return 0;
    if (f[VNET] >> 4 == 4) {
        tcp = VNET + (size_t)(f[VNET] & 0xF) * 4;
        if (f[VNET + 9] != IPPROTO_TCP || n < tcp + 13)
            return 0;
    } else if (f[VNET] >> 4 == 6 && f[VNET + 6] == IPPROTO_TCP) {
        tcp = VNET + 40;
        if (n < tcp + 13)
            return 0;
    } else {
        return 0;
    }
    return n > tcp + (size_t)(f[tcp + 12] >> 4) * 4;
}

static void count_placed(uint8_t *page, uint64_t packets, uint64_t bytes)
{
    struct timespec ts;
    uint64_t *counts = (uint64_t *)(page + OFFLOAD_AT);
    double stamp;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    stamp = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    counts[0] += packets;
    counts[1] += bytes;
    memcpy(page + OFFLOAD_AT + 16, &stamp, sizeof stamp);
}

/* One packet to a programmed destination: 1 when it was placed and counted. */
static int place(struct table *t, struct entry *e, const uint8_t *f, size_t n)
{
    size_t length = n - VNET;
    uint64_t packets = 1, bytes = length, sent = length + IPOIB_ENCAP_LEN;
    if (e->kind == KIND_RC) {
        if (length > e->limit)
            return 0; /* the full path drops it and reports the PMTU */
    } else if (f[1] == GSO_NONE) {
        if (length > e->limit || (e->gro && tcp_segment(f, n)))
            return 0;
    } else {
        /* an LSO super-packet: the HCA cuts it, the receiver counts the segments */
        size_t hdr_len = f[2] | (size_t)f[3] << 8, mss = f[4] | (size_t)f[5] << 8;
        if (!mss)
            mss = 1;
        if (length <= hdr_len)
            return 0;
        packets = (length - hdr_len + mss - 1) / mss;
        bytes = length + (packets - 1) * hdr_len;
        sent = length - hdr_len;
    }
    if (write(e->sink, f, n) != (ssize_t)n)
        return 0; /* Python tries again, and then the wire */
    count_placed(e->page, packets, bytes);
    t->tx_packets++;
    t->tx_bytes += sent;
    e->uses++;
    return 1;
}

static int handle(struct table *t, size_t n)
{
    const uint8_t *f = t->buf, *key;
    int len, done = 0;
    struct entry *e;
    if (!*t->host_ok || n < VNET + 20)
        return 0;
    if (f[VNET] >> 4 == 4) {
        key = f + VNET + 16;
        len = 4;
    } else if (f[VNET] >> 4 == 6 && n >= VNET + 40 && f[VNET + 6] != IPPROTO_ICMPV6) {
        key = f + VNET + 24;
        len = 16;
    } else {
        return 0;
    }
    pthread_mutex_lock(&t->lock);
    e = find(t, key, len);
    if (e && *e->port_ok && !e->page[REVOKED_AT])
        done = place(t, e, f, n);
    pthread_mutex_unlock(&t->lock);
    return done;
}

struct table *ipoibfs_flows_new(int fd, const uint8_t *host_ok)
{
    struct table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->fd = fd;
    t->host_ok = host_ok;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void ipoibfs_flows_free(struct table *t)
{
    pthread_mutex_destroy(&t->lock);
    free(t);
}

uint8_t *ipoibfs_flows_buffer(struct table *t)
{
    return t->buf;
}

/* Read until a packet is not ours to send: its length (it is in the buffer), 0 at end of
 * file, or -errno. */
long ipoibfs_flows_run(struct table *t)
{
    for (;;) {
        ssize_t n = read(t->fd, t->buf, BUFFER);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0 || !handle(t, (size_t)n))
            return n;
    }
}

/* Program a destination; 0 if the table changed since `generation` was read, or is full. */
int ipoibfs_flows_install(struct table *t, uint64_t generation, const uint8_t *key, int len,
                            int kind, uint32_t limit, int gro, int sink, uint8_t *page,
                            const uint8_t *port_ok)
{
    struct entry *e, *spot = NULL;
    int ok = 0;
    if (len != 4 && len != 16)
        return 0;
    pthread_mutex_lock(&t->lock);
    if (generation != t->generation)
        goto out;
    e = find(t, key, len);
    if (!e) {
        if (t->live >= MAX_ENTRIES || t->taken >= SLOTS - 1)
            goto out;
        for (uint32_t i = hash(key, len);; i++) {
            spot = &t->slots[i & (SLOTS - 1)];
            if (spot->state != LIVE)
                break;
        }
        if (spot->state == EMPTY)
            t->taken++;
        t->live++;
        e = spot;
    }
    e->state = LIVE;
    e->keylen = (uint8_t)len;
    memcpy(e->key, key, len);
    e->kind = (uint8_t)kind;
    e->limit = limit;
    e->gro = (uint8_t)!!gro;
    e->sink = sink;
    e->page = page;
    e->port_ok = port_ok;
    e->uses = 0;
    ok = 1;
out:
    pthread_mutex_unlock(&t->lock);
    return ok;
}

/* Forget every destination whose page is `page` (NULL: every destination). */
void ipoibfs_flows_forget(struct table *t, const uint8_t *page)
{
    pthread_mutex_lock(&t->lock);
    t->generation++;
    if (page == NULL) {
        memset(t->slots, 0, sizeof t->slots);
        t->live = t->taken = 0;
    } else {
        for (int i = 0; i < SLOTS; i++) {
            if (t->slots[i].state == LIVE && t->slots[i].page == page) {
                t->slots[i].state = GONE;
                t->live--;
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
}

void ipoibfs_flows_counts(struct table *t, uint64_t *out)
{
    pthread_mutex_lock(&t->lock);
    out[0] = t->tx_packets;
    out[1] = t->tx_bytes;
    pthread_mutex_unlock(&t->lock);
}

/* The keys sent to since the last call, 17 bytes each (length, then 16), at most `max`. */
int ipoibfs_flows_used(struct table *t, uint8_t *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < SLOTS && n < max; i++) {
        struct entry *e = &t->slots[i];
        if (e->state == LIVE && e->uses) {
            e->uses = 0;
            out[n * 17] = e->keylen;
            memcpy(out + n * 17 + 1, e->key, 16);
            n++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}
