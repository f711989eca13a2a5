/* The netdev's flow offload: the reader thread's loop, in C, for the packets the driver has
 * programmed it to send on its own (netdev/flows.py). A TUN's read gives a packet with its
 * virtio_net_hdr; a packet to a programmed destination is written into that peer's sink and
 * counted, on the peer's placement page and as sent, with the driver's own rules
 * (Neighbours.xmit_fast, UdRoute and PlaceCell.send, RcRoute.send). Anything else goes back
 * to Python, whole, in the order it came.
 *
 * A destination that wants GRO (the peer's GRO or LRO is on) gets the TCP segments of a
 * batch merged (gro.c), as PlaceCell.flush merges them: a batch ends when the TUN has
 * nothing more to read, or after BATCH packets, as PacketReader's does. Frames held for it
 * are copied aside; what is held when a packet goes back to Python is delivered first, and
 * what cannot be delivered any more (the queue was revoked, the table changed) is handed
 * back to Python whole and uncounted, in the order it came, ahead of that packet.
 *
 * The table is the driver's to program (install, clear, forget) from another thread: a
 * mutex guards it, and a packet is looked up and sent under it, so that once `clear` or
 * `forget` returns no packet goes where an entry said. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "gro.h"

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
#define BATCH 64          /* netdev/links.py: a batch's packets at most */
#define HOLD_SIZE 4160    /* a frame held for GRO at most: a UD datagram, with its header */
#define HOLD_AREA ((size_t)BATCH * HOLD_SIZE)
#define TAKE_BACK (-(1L << 20)) /* run(): no packet, but frames to take back */

enum { EMPTY, LIVE, GONE };
enum { FREE, HELD, PENDING };   /* a hold slot */
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

/* A flow GRO holds for a destination (the skb on its GRO list). */
struct held {
    struct entry *dest;     /* NULL: not in use */
    uint64_t order;         /* the oldest of a destination's goes first */
    struct gro_flow gro;
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
    /* GRO, on the reader thread (`stale` is set under the lock by clear and forget) */
    int stale;
    int held;               /* frames in held flows */
    int used;               /* hold slots taken in this batch, in the order frames came */
    int batch;              /* packets read since nothing was held */
    int pending;            /* frames to take back; the next is looked for from `taking` */
    int taking;
    uint64_t order;
    uint8_t state[BATCH];
    uint16_t length[BATCH];
    uint8_t *hold;          /* BATCH slots of HOLD_SIZE, allocated when first needed */
    struct held flows[BATCH];
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

static int open_to(const struct entry *e)
{
    return *e->port_ok && !e->page[REVOKED_AT];
}

static void delivered(struct table *t, struct entry *e, uint64_t packets, uint64_t bytes,
                      uint64_t sent_packets, uint64_t sent)
{
    count_placed(e->page, packets, bytes);
    t->tx_packets += sent_packets;
    t->tx_bytes += sent;
    e->uses++;
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
        if (length > e->limit)
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
    delivered(t, e, packets, bytes, 1, sent);
    return 1;
}

/* ---------------------------------------------------------------- GRO, on the reader thread */

static uint8_t *slot_frame(struct table *t, int slot)
{
    return t->hold + (size_t)slot * HOLD_SIZE;
}

static void release(struct table *t, const uint8_t *inside)
{
    t->state[(inside - t->hold) / HOLD_SIZE] = FREE;
    t->held--;
}

/* A held frame, alone and as it came; 0 when its queue takes nothing any more. */
static int deliver_frame(struct table *t, struct entry *e, int slot)
{
    size_t n = t->length[slot];
    if (!open_to(e) || write(e->sink, slot_frame(t, slot), n) != (ssize_t)n)
        return 0;
    delivered(t, e, 1, n - VNET, 1, n - VNET + IPOIB_ENCAP_LEN);
    release(t, slot_frame(t, slot));
    return 1;
}

/* A held flow, merged (or its one frame as it came), counted segment by segment as the HCA
 * delivered them; 0 when its queue takes nothing any more. */
static int deliver(struct table *t, struct held *h)
{
    struct gro_flow *fl = &h->gro;
    struct iovec iov[GRO_MAX_SEGS + 1];
    uint8_t header[GRO_HEADER];
    uint64_t headers = (uint64_t)(fl->first.ihl + fl->first.thlen), bytes;
    size_t total = 0;
    int n;
    if (!open_to(h->dest))
        return 0;
    n = gro_complete(fl, header, iov);
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (writev(h->dest->sink, iov, n) != (ssize_t)total)
        return 0;
    bytes = fl->length + (uint64_t)(fl->count - 1) * headers;
    delivered(t, h->dest, (uint64_t)fl->count, bytes, (uint64_t)fl->count,
              bytes + (uint64_t)fl->count * IPOIB_ENCAP_LEN);
    for (int i = 0; i < fl->count; i++)
        release(t, fl->payload[i] - 1);
    h->dest = NULL;
    return 1;
}

static struct held *find_flow(struct table *t, const struct entry *e, const uint8_t *key,
                              int len)
{
    for (int i = 0; i < BATCH; i++) {
        struct held *h = &t->flows[i];
        if (h->dest == e && h->gro.first.keylen == len && !memcmp(h->gro.first.key, key, len))
            return h;
    }
    return NULL;
}

/* The oldest held flow (of `e`; NULL: of any destination), and how many `e` holds. */
static struct held *oldest(struct table *t, const struct entry *e, int *count)
{
    struct held *old = NULL;
    *count = 0;
    for (int i = 0; i < BATCH; i++) {
        struct held *h = &t->flows[i];
        if (h->dest && (!e || h->dest == e)) {
            ++*count;
            if (!old || h->order < old->order)
                old = h;
        }
    }
    return old;
}

/* napi_gro_flush: the held flows (of `e`; NULL: all), oldest first. */
static int flush(struct table *t, const struct entry *e)
{
    int count;
    for (struct held *h; (h = oldest(t, e, &count));)
        if (!deliver(t, h))
            return 0;
    return 1;
}

/* What is held becomes Python's, in the order it came, uncounted. */
static void hand_back(struct table *t)
{
    for (int i = 0; i < BATCH; i++)
        t->flows[i].dest = NULL;
    for (int i = 0; i < t->used; i++) {
        if (t->state[i] == HELD) {
            t->state[i] = PENDING;
            t->pending++;
        }
    }
    t->held = 0;
    t->taking = 0;
    t->stale = 0;
}

/* dev_gro_receive for one TCP segment to `e` (PlaceCell.send holds it, gro_receive takes
 * it); 0 when something held could not be delivered. */
static int hold(struct table *t, struct entry *e, const uint8_t *f, size_t n)
{
    struct gro_seg seg;
    struct held *h;
    uint8_t key[GRO_KEY];
    uint8_t *copy;
    int slot, count;
    if (t->used >= BATCH) { /* cannot be: a batch ends after BATCH packets */
        if (!flush(t, NULL))
            return 0;
        t->used = 0;
    }
    slot = t->used++;
    copy = slot_frame(t, slot);
    memcpy(copy, f, n);
    t->length[slot] = (uint16_t)n;
    t->state[slot] = HELD;
    t->held++;
    switch (gro_parse(copy, n, &seg)) {
    case GRO_NONE:
        return deliver_frame(t, e, slot);
    case GRO_REFUSED:
        h = find_flow(t, e, key, gro_flow_key(copy, n, key));
        if (h && !deliver(t, h))
            return 0;
        return deliver_frame(t, e, slot);
    case GRO_SEGMENT:
        break;
    }
    h = find_flow(t, e, seg.key, seg.keylen);
    if (h) {
        if (gro_joins(&h->gro, &seg))
            return gro_append(&h->gro, &seg) ? deliver(t, h) : 1;
        if (!deliver(t, h))
            return 0;
    }
    if (gro_alone(&seg))
        return deliver_frame(t, e, slot);
    h = oldest(t, e, &count);
    if (count >= GRO_MAX_FLOWS && !deliver(t, h))
        return 0;
    for (h = t->flows; h->dest; h++)
        ; /* a free one: no more flows than frames are held */
    h->dest = e;
    h->order = ++t->order;
    gro_start(&h->gro, &seg);
    return 1;
}

/* Under the lock: deliver what is held, or hand it back; 1 when delivered. */
static int flush_all(struct table *t)
{
    int ok;
    pthread_mutex_lock(&t->lock);
    ok = !t->stale && flush(t, NULL);
    if (!ok)
        hand_back(t);
    pthread_mutex_unlock(&t->lock);
    return ok;
}

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

enum { PYTHONS, SENT, TAKEN_BACK };

static int handle(struct table *t, size_t n)
{
    const uint8_t *f = t->buf, *key;
    int len, done = PYTHONS;
    struct entry *e;
    if (!*t->host_ok || n < VNET + 20)
        return PYTHONS;
    if (f[VNET] >> 4 == 4) {
        key = f + VNET + 16;
        len = 4;
    } else if (f[VNET] >> 4 == 6 && n >= VNET + 40 && f[VNET + 6] != IPPROTO_ICMPV6) {
        key = f + VNET + 24;
        len = 16;
    } else {
        return PYTHONS;
    }
    pthread_mutex_lock(&t->lock);
    if (t->stale) {
        hand_back(t); /* the table changed: this packet follows what was held, in Python */
        goto out;
    }
    e = find(t, key, len);
    if (!e || !open_to(e))
        goto out;
    if (e->gro && e->kind == KIND_UD && n <= HOLD_SIZE && n - VNET <= e->limit &&
        tcp_segment(f, n)) {
        if (hold(t, e, f, n)) {
            done = SENT;
        } else {
            hand_back(t);
            done = TAKEN_BACK;
        }
    } else if (t->held && !flush(t, e)) {
        hand_back(t);
    } else {
        done = place(t, e, f, n) ? SENT : PYTHONS;
    }
out:
    pthread_mutex_unlock(&t->lock);
    return done;
}
/* The table and its hold area are mapped, not allocated: their pages are resident only once
 * used (calloc would clear them once malloc's mmap threshold has grown past their size). */
static void *map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

struct table *ipoibfs_flows_new(int fd, const uint8_t *host_ok)
{
    struct table *t = map(sizeof *t);
    if (!t)
        return NULL;
    t->hold = map(HOLD_AREA);
    if (!t->hold) {
        munmap(t, sizeof *t);
        return NULL;
    }
    t->fd = fd;
    t->host_ok = host_ok;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void ipoibfs_flows_free(struct table *t)
{
    pthread_mutex_destroy(&t->lock);
    munmap(t->hold, HOLD_AREA);
    munmap(t, sizeof *t);
}

uint8_t *ipoibfs_flows_buffer(struct table *t)
{
    return t->buf;
}

/* Read until a packet is not ours to send: its length (it is in the buffer; any frames to
 * take back come before it), 0 at end of file, -errno, or TAKE_BACK. */
long ipoibfs_flows_run(struct table *t)
{
    for (;;) {
        ssize_t n;
        int done, error;
        if (t->pending)
            return TAKE_BACK;
        if (!t->held) {
            t->batch = t->used = 0;
        } else if (t->batch >= BATCH || !readable(t->fd)) {
            if (!flush_all(t))
                return TAKE_BACK;
            t->batch = t->used = 0;
        }
        n = read(t->fd, t->buf, BUFFER);
        error = errno;
        if (n < 0 && error == EINTR)
            continue;
        if (n <= 0) {
            if (t->held && !flush_all(t))
                return TAKE_BACK;
            return n < 0 ? -error : 0;
        }
        t->batch++;
        done = handle(t, (size_t)n);
        if (done == TAKEN_BACK)
            return TAKE_BACK;
        if (done == PYTHONS) {
            if (t->held)
                flush_all(t); /* or hand back: those go first */
            return n;
        }
    }
}

/* The next frame handed back to Python: its length, and where it is; 0 when there is none
 * left (the hold slots are free again). */
int ipoibfs_flows_take(struct table *t, const uint8_t **frame)
{
    for (; t->taking < t->used; t->taking++) {
        if (t->state[t->taking] == PENDING) {
            t->state[t->taking] = FREE;
            t->pending--;
            *frame = slot_frame(t, t->taking);
            return t->length[t->taking++];
        }
    }
    t->pending = 0;
    t->used = 0;
    return 0;
}

/* Where run() leaves the count of frames to take back. */
int *ipoibfs_flows_pending(struct table *t)
{
    return &t->pending;
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
    if (t->held)
        t->stale = 1; /* nothing held is written now: it goes back to Python */
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
