/* io_uring SEND_ZC batches in C: the SQE fill, the submit and the CQE reap of
 * aiozc/engines/io_uring.py's LoopRing, one call per batch.
 *
 * The rings are set up and mapped by aiozc/_sys/uring.py (Ring); this file gets pointers
 * into those mappings and owns the local SQ tail from then on. aiozc/_sys/uring_io.py holds
 * the pure-Python reference (PyRingIO) of everything here; tests/test_uring_io_diff.py drives
 * both with the same sends and the same CQEs and requires the same SQEs and events.
 *
 * What a reap returns is a list of events, four int64 each (kind, key, a, b), in CQE order:
 *   ZU_EV_G_RESULT    key=group, a=index, b=res      a group's result other than its size
 *   ZU_EV_G_RELEASE   key=group, a=first index, b=count   datagrams released zero-copy
 *   ZU_EV_G_RELEASE_COPIED  the same, the kernel copied (or nothing went: a failed result)
 *   ZU_EV_G_RESULTS_IN key=group                    every result of the group is in
 *   ZU_EV_G_END       key=group                     every datagram released: unpin
 *   ZU_EV_S_RESULT    key=user_data, a=res          a single send's unexpected result
 *   ZU_EV_S_DONE      key=user_data, a=copied       the kernel no longer references it
 *   ZU_EV_D_PENDING   key=tag   a compiled datagram path has results to apply (_core_udpring.c)
 * Python maps keys to its futures and callbacks (LoopRing._dispatch). A release run covers
 * consecutive datagrams of one group with the same copied bit: a batch of 256 datagrams
 * released zero-copy is one event.
 *
 * The kernel posts a send's notification only after its result (the request holds a
 * reference on the notification until it completes); a notification seen first is kept all
 * the same (single sends) so that nothing depends on it. Always decide from F_MORE: failed
 * sends (-ECONNRESET, -ENOMEM) carry it too.
 */

#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif

#define ZU_OP_SEND_ZC 47
#define ZU_RECVSEND_FIXED_BUF (1u << 2)
#define ZU_SEND_ZC_REPORT_USAGE (1u << 3) /* absent from liburing-dev 2.3's headers */
#define ZU_CQE_F_MORE (1u << 1)
#define ZU_CQE_F_NOTIF (1u << 3)
#define ZU_NOTIF_COPIED (1u << 31)
#define ZU_SQ_CQ_OVERFLOW (1u << 1)
#define ZU_SQ_TASKRUN (1u << 2)
#define ZU_SETUP_DEFER_TASKRUN (1u << 13)
#define ZU_ENTER_GETEVENTS 1u

#define ZU_INDEX_BITS 20
#define ZU_INDEX_MASK ((1ll << ZU_INDEX_BITS) - 1)
#define ZU_GROUP_SIZE (1ll << ZU_INDEX_BITS)
#define ZU_GROUP_UD (1ull << 63)
#define ZU_OWNED_UD (1ull << 62) /* | index in zc_uring.owned (_core_udpring.c) */
#define ZU_MAX_FIXED 64
#define ZU_EXPECT_ANY INT64_MIN /* a single send whose every result is reported */

#define ZU_EV_G_RESULT 1
#define ZU_EV_G_RELEASE 2
#define ZU_EV_G_RELEASE_COPIED 3
#define ZU_EV_G_RESULTS_IN 4
#define ZU_EV_G_END 5
#define ZU_EV_S_RESULT 6
#define ZU_EV_S_DONE 7
#define ZU_EV_D_PENDING 8

/* include/uapi/linux/io_uring.h, only the members a send uses (uring.py checks the same
 * offsets against its own declaration). */
struct zu_sqe {
    uint8_t opcode, flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t addr2; /* the destination sockaddr */
    uint64_t addr;
    uint32_t len, msg_flags;
    uint64_t user_data;
    uint16_t buf_index, personality, addr_len, pad3;
    uint64_t addr3, pad2;
};
struct zu_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};
typedef char zu_sqe_is_64_bytes[sizeof(struct zu_sqe) == 64 ? 1 : -1];
typedef char zu_cqe_is_16_bytes[sizeof(struct zu_cqe) == 16 ? 1 : -1];

/* Open addressing on int64 keys >= 0, linear probing, backward-shift deletion. Keys are
 * handed out in sequence, so key & mask spreads them without hashing. */
typedef struct {
    int64_t *keys;
    void **vals;
    int64_t mask, n;
} zu_map;

static int zu_map_init(zu_map *m, int64_t cap) {
    m->keys = malloc((size_t)cap * sizeof *m->keys);
    m->vals = calloc((size_t)cap, sizeof *m->vals);
    if (!m->keys || !m->vals) return -1;
    memset(m->keys, 0xff, (size_t)cap * sizeof *m->keys); /* -1: empty */
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

/* A key's home slot. Keys are consecutive user_data values: with `key & mask` they filled one
 * run of slots, and deleting the oldest scanned the whole run (2.1k instructions per per-call
 * sendto_zc with 256 in flight, callgrind); Fibonacci hashing spreads them out. */
static int64_t zu_home(const zu_map *m, int64_t key) {
    return (int64_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> 32) & m->mask;
}

static void *zu_map_get(const zu_map *m, int64_t key) {
    int64_t i = zu_home(m, key);
    while (m->keys[i] != -1) {
        if (m->keys[i] == key) return m->vals[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

static void zu_map_insert(zu_map *m, int64_t key, void *val) {
    int64_t i = zu_home(m, key);
    while (m->keys[i] != -1) i = (i + 1) & m->mask;
    m->keys[i] = key;
    m->vals[i] = val;
    m->n++;
}

static int zu_map_put(zu_map *m, int64_t key, void *val) {
    if ((m->n + 1) * 2 > m->mask + 1) { /* keep it at most half full */
        zu_map old = *m;
        int64_t i;
        if (zu_map_init(m, (old.mask + 1) * 2) < 0) {
            free(m->keys);
            free(m->vals);
            *m = old;
            return -1;
        }
        for (i = 0; i <= old.mask; i++)
            if (old.keys[i] != -1) zu_map_insert(m, old.keys[i], old.vals[i]);
        free(old.keys);
        free(old.vals);
    }
    zu_map_insert(m, key, val);
    return 0;
}

static void zu_map_del(zu_map *m, int64_t key) {
    int64_t i = zu_home(m, key), j;
    while (m->keys[i] != key) {
        if (m->keys[i] == -1) return;
        i = (i + 1) & m->mask;
    }
    for (j = (i + 1) & m->mask; m->keys[j] != -1; j = (j + 1) & m->mask) {
        int64_t home = zu_home(m, m->keys[j]);
        /* move j back into the hole at i unless its home lies cyclically in (i, j] */
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = -1;
    m->vals[i] = NULL;
    m->n--;
}

typedef struct {
    int64_t n, left, results; /* datagrams; not yet released; results still to come */
    int64_t uniform;          /* every datagram's size, when sizes is NULL */
    int64_t *sizes;           /* else each one's (stored after the struct) */
} zu_group;

typedef struct {
    int64_t expect;
    int32_t notified_res;
    uint8_t resulted, notified;
    uint8_t owned, voided; /* a compiled datagram path's send in use (_core_udpring.c); it failed */
    zc_dgram *owner;       /* (NULL once that path let go of it) */
    int64_t ident, slot;   /* its tracker id and write slot */
    int64_t free_next;     /* (owned table) the next free entry + 1, 0: none */
} zu_single;

typedef struct zc_uring {
    int fd;
    uint32_t setup_flags;
    uint32_t *sq_khead, *sq_ktail, *sq_kflags, *cq_khead, *cq_ktail;
    uint32_t sq_mask, sq_entries, cq_mask;
    uint32_t sq_tail; /* local: published to the kernel by a submit */
    struct zu_sqe *sqes;
    struct zu_cqe *cqes;
    int nfixed;
    uint64_t fixed_lo[ZU_MAX_FIXED], fixed_hi[ZU_MAX_FIXED];
    int64_t next_ud, next_group;
    zu_map singles, groups;
    int64_t *ev;
    int64_t nev, ev_cap;
    int64_t filled; /* SQEs the last zc_uring_send_group filled */
    int err;        /* why it filled fewer than asked (errno) */
    int64_t submits, submitted, fixed_sends;
    /* the compiled datagram path's sends: a table, not the singles map (no malloc, no hash per
     * datagram: ~0.3k instructions, callgrind), user_data ZU_OWNED_UD | index */
    zu_single *owned;
    int64_t owned_n, owned_cap, owned_free; /* entries used so far, allocated, free list + 1 */
    /* a compiled send asked Python to schedule the loop iteration's submit (DG_F_SUBMIT) and
     * that submit has not run yet: Python clears it (CRingIO.submit) */
    int submit_asked;
} zc_uring;

zc_uring *zc_uring_new(int fd, uint32_t setup_flags, uint32_t *sq_khead, uint32_t *sq_ktail,
                       uint32_t *sq_kflags, uint32_t sq_mask, uint32_t sq_entries, void *sqes,
                       uint32_t *cq_khead, uint32_t *cq_ktail, uint32_t cq_mask, void *cqes) {
    zc_uring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->fd = fd;
    r->setup_flags = setup_flags;
    r->sq_khead = sq_khead;
    r->sq_ktail = sq_ktail;
    r->sq_kflags = sq_kflags;
    r->sq_mask = sq_mask;
    r->sq_entries = sq_entries;
    r->sq_tail = *sq_ktail;
    r->sqes = sqes;
    r->cq_khead = cq_khead;
    r->cq_ktail = cq_ktail;
    r->cq_mask = cq_mask;
    r->cqes = cqes;
    r->next_ud = 1;
    r->ev_cap = 256;
    r->ev = malloc((size_t)r->ev_cap * 4 * sizeof *r->ev);
    if (!r->ev || zu_map_init(&r->singles, 64) < 0 || zu_map_init(&r->groups, 64) < 0) {
        free(r->ev);
        free(r->singles.keys);
        free(r->singles.vals);
        free(r->groups.keys);
        free(r->groups.vals);
        free(r);
        return NULL;
    }
    return r;
}

static void zu_map_free_all(zu_map *m) {
    int64_t i;
    for (i = 0; i <= m->mask; i++)
        if (m->keys[i] != -1) free(m->vals[i]);
    free(m->keys);
    free(m->vals);
}

void zc_uring_free(zc_uring *r) {
    if (!r) return;
    zu_map_free_all(&r->singles);
    free(r->owned);
    zu_map_free_all(&r->groups);
    free(r->ev);
    free(r);
}

int zc_uring_set_fixed(zc_uring *r, uint64_t *lo, uint64_t *hi, int n) {
    int i;
    if (n < 0 || n > ZU_MAX_FIXED) return -EINVAL;
    for (i = 0; i < n; i++) {
        r->fixed_lo[i] = lo[i];
        r->fixed_hi[i] = hi[i];
    }
    r->nfixed = n;
    return 0;
}

uint32_t zc_uring_pending(zc_uring *r) {
    return r->sq_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
}

static int zu_needs_enter(const zc_uring *r) {
    /* DEFER_TASKRUN runs completion work only inside io_uring_enter(GETEVENTS); TASKRUN
     * advertises parked work; an overflowed CQ is flushed back only on GETEVENTS. */
    if (r->setup_flags & ZU_SETUP_DEFER_TASKRUN) return 1;
    return (__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & (ZU_SQ_CQ_OVERFLOW | ZU_SQ_TASKRUN)) != 0;
}

static int64_t zu_enter(const zc_uring *r, uint32_t to_submit, uint32_t flags) {
    for (;;) {
        long ret = syscall(__NR_io_uring_enter, r->fd, to_submit, 0u, flags, NULL, (size_t)0);
        if (ret >= 0) return ret;
        if (errno != EINTR) return -errno; /* a signal must not look like a failed submit */
    }
}

/* Ring.submit(wait_nr=0): publish the tail, enter until the kernel took every SQE or none
 * in a round (then they stay queued). Counts one submit of what was pending. */
int64_t zc_uring_submit(zc_uring *r) {
    int64_t total = 0, pending = zc_uring_pending(r);
    if (!pending) return 0;
    __atomic_store_n(r->sq_ktail, r->sq_tail, __ATOMIC_RELEASE);
    for (;;) {
        uint32_t to_submit = zc_uring_pending(r);
        int needs = zu_needs_enter(r);
        int64_t done;
        if (!to_submit && !needs) break;
        done = zu_enter(r, to_submit, needs ? ZU_ENTER_GETEVENTS : 0);
        if (done < 0) return done;
        total += done;
        if (done == 0 || done >= to_submit) break;
    }
    r->submits++;
    r->submitted += pending;
    return total;
}

static int zu_fixed_index(const zc_uring *r, uint64_t addr, uint64_t size) {
    int i;
    for (i = 0; i < r->nfixed; i++)
        if (r->fixed_lo[i] <= addr && addr + size <= r->fixed_hi[i]) return i;
    return -1;
}

ZC_HOT static void zu_fill(zc_uring *r, int fd, uint32_t flags, const char *buf, int64_t len,
                    const char *dest, uint32_t dest_len, uint64_t ud) {
    struct zu_sqe *sqe = &r->sqes[r->sq_tail & r->sq_mask];
    int fixed = r->nfixed ? zu_fixed_index(r, (uint64_t)(uintptr_t)buf, (uint64_t)len) : -1;
    sqe->opcode = ZU_OP_SEND_ZC;
    sqe->flags = 0;
    sqe->ioprio = ZU_SEND_ZC_REPORT_USAGE | (fixed >= 0 ? ZU_RECVSEND_FIXED_BUF : 0);
    sqe->fd = fd;
    sqe->addr2 = (uint64_t)(uintptr_t)dest;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = (uint32_t)len;
    sqe->msg_flags = flags;
    sqe->user_data = ud;
    sqe->buf_index = fixed >= 0 ? (uint16_t)fixed : 0;
    sqe->personality = 0;
    sqe->addr_len = (uint16_t)dest_len;
    sqe->pad3 = 0;
    sqe->addr3 = 0;
    sqe->pad2 = 0;
    r->sq_tail++;
    if (fixed >= 0) r->fixed_sends++;
}

/* A free SQ slot, submitting what is queued when the SQ is full: 0, or -errno (-EAGAIN:
 * still full after the submit). */
static int64_t zu_room(zc_uring *r) {
    int64_t ret;
    if (zc_uring_pending(r) < r->sq_entries) return 0;
    ret = zc_uring_submit(r);
    if (ret < 0) return ret;
    return zc_uring_pending(r) < r->sq_entries ? 0 : -EAGAIN;
}

/* One SEND_ZC; returns its user_data (> 0) or -errno. `expect`: a result of exactly this
 * many bytes is not reported (ZU_EXPECT_ANY: every result is). `dest` (a sockaddr, or
 * NULL) must stay alive until the result: the caller keeps it. */
int64_t zc_uring_send(zc_uring *r, int fd, uint32_t flags, char *buf, int64_t len, char *dest,
                      uint32_t dest_len, int64_t expect) {
    zu_single *s;
    int64_t ret = zu_room(r), ud;
    if (ret < 0) return ret;
    s = calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    ud = r->next_ud;
    if (zu_map_put(&r->singles, ud, s) < 0) {
        free(s);
        return -ENOMEM;
    }
    s->expect = expect;
    r->next_ud = ud + 1;
    zu_fill(r, fd, flags, buf, len, dest, dest_len, (uint64_t)ud);
    return ud;
}

/* One group of n datagrams (n <= ZU_GROUP_SIZE): datagram k at bufs[k] or views[k].buf (one
 * of the two is NULL), of `uniform` bytes, or sizes[k] / views[k].len when uniform < 0. */
static int64_t zu_send_group(zc_uring *r, int fd, uint32_t flags, char **bufs, const Py_buffer *views,
                             const int64_t *sizes, int64_t n, int64_t uniform) {
    zu_group *g;
    int64_t key, k, free_slots;
    if (n < 0 || n > ZU_GROUP_SIZE) return -EINVAL;
    g = malloc(sizeof *g + (uniform < 0 ? (size_t)n * sizeof(int64_t) : 0));
    if (!g) return -ENOMEM;
    key = r->next_group;
    if (zu_map_put(&r->groups, key, g) < 0) {
        free(g);
        return -ENOMEM;
    }
    r->next_group = key + 1;
    g->n = g->left = g->results = n;
    g->uniform = uniform;
    g->sizes = NULL;
    if (uniform < 0) {
        g->sizes = (int64_t *)(g + 1);
        for (k = 0; k < n; k++) g->sizes[k] = views ? (int64_t)views[k].len : sizes[k];
    }
    r->err = 0;
    free_slots = (int64_t)r->sq_entries - zc_uring_pending(r);
    for (k = 0; k < n; k++) {
        if (free_slots <= 0) {
            int64_t ret = zc_uring_submit(r); /* SQ full: hand this much to the kernel now */
            if (ret < 0) {
                r->err = (int)-ret;
                break;
            }
            free_slots = (int64_t)r->sq_entries - zc_uring_pending(r);
            if (free_slots <= 0) {
                r->err = EAGAIN;
                break;
            }
        }
        zu_fill(r, fd, flags, views ? (const char *)views[k].buf : bufs[k], g->sizes ? g->sizes[k] : uniform,
                NULL, 0, ZU_GROUP_UD | ((uint64_t)key << ZU_INDEX_BITS) | (uint64_t)k);
        free_slots--;
    }
    r->filled = k;
    return key;
}

/* SEND_ZC for n datagrams of a connected socket (n <= ZU_GROUP_SIZE), one group; returns its
 * key (>= 0) or -ENOMEM. `sizes` NULL: every datagram is `uniform` bytes (the usual batch;
 * cffi then converts no list of sizes). The group is registered whole even when fewer SQEs
 * were filled (r->filled, r->err the errno): the caller raises, as the pure path does. */
int64_t zc_uring_send_group(zc_uring *r, int fd, uint32_t flags, char **bufs, int64_t *sizes,
                            int64_t n, int64_t uniform) {
    return zu_send_group(r, fd, flags, bufs, NULL, sizes, n, sizes ? -1 : uniform);
}

/* zc_uring_send_group for the datagrams of a PinSet (`pins` is its address, id() in Python):
 * their addresses and sizes are read from its buffer exports, nothing is converted. */
int64_t zc_uring_send_pins(zc_uring *r, int fd, uint32_t flags, intptr_t pins) {
    const zc_pinset *p = (const zc_pinset *)pins;
    return zu_send_group(r, fd, flags, NULL, p->views, NULL, p->n, p->n ? p->uniform : 0);
}

static int zu_emit(zc_uring *r, int64_t kind, int64_t key, int64_t a, int64_t b) {
    int64_t *e;
    if (r->nev == r->ev_cap) {
        int64_t *q = realloc(r->ev, (size_t)r->ev_cap * 2 * 4 * sizeof *q);
        if (!q) return -1;
        r->ev = q;
        r->ev_cap *= 2;
    }
    e = &r->ev[r->nev++ * 4];
    e[0] = kind;
    e[1] = key;
    e[2] = a;
    e[3] = b;
    return 0;
}

/* Datagram i of group `key` is released: extends the last event if that is a release run
 * of the same group and kind ending just before i. 1 if that ended (and freed) the group,
 * -1 out of memory. */
static int zu_release(zc_uring *r, zu_group *g, int64_t key, int64_t i, int copied) {
    int64_t kind = copied ? ZU_EV_G_RELEASE_COPIED : ZU_EV_G_RELEASE;
    if (r->nev) {
        int64_t *e = &r->ev[(r->nev - 1) * 4];
        if (e[0] == kind && e[1] == key && e[2] + e[3] == i) {
            e[3]++;
            goto counted;
        }
    }
    if (zu_emit(r, kind, key, i, 1) < 0) return -1;
counted:
    if (--g->left) return 0;
    zu_map_del(&r->groups, key);
    free(g);
    return zu_emit(r, ZU_EV_G_END, key, 0, 0) < 0 ? -1 : 1;
}

static int zu_group_cqe(zc_uring *r, zu_group *g, int64_t key, int64_t i, int32_t res,
                        uint32_t flags) {
    if (flags & ZU_CQE_F_NOTIF) return zu_release(r, g, key, i, (res & ZU_NOTIF_COPIED) != 0);
    if (!--g->results && zu_emit(r, ZU_EV_G_RESULTS_IN, key, 0, 0) < 0) return -1;
    if (res != (g->sizes ? g->sizes[i] : g->uniform) && zu_emit(r, ZU_EV_G_RESULT, key, i, res) < 0)
        return -1;
    if (flags & ZU_CQE_F_MORE) return 0; /* its notification follows */
    return zu_release(r, g, key, i, 1);  /* nothing more will come: not zero-copy */
}

static int zu_single_done(zc_uring *r, zu_single *s, int64_t ud, int copied) {
    zu_map_del(&r->singles, ud);
    free(s);
    return zu_emit(r, ZU_EV_S_DONE, ud, copied, 0);
}

static int zu_owned_cqe(zc_uring *r, int64_t index, int32_t res, uint32_t flags);

static int zu_single_cqe(zc_uring *r, int64_t ud, int32_t res, uint32_t flags) {
    zu_single *s = zu_map_get(&r->singles, ud);
    if (!s) return 0;
    if (flags & ZU_CQE_F_NOTIF) {
        if (!s->resulted) { /* result not seen yet: finish both when it arrives */
            s->notified = 1;
            s->notified_res = res;
            return 0;
        }
        return zu_single_done(r, s, ud, (res & ZU_NOTIF_COPIED) != 0);
    }
    s->resulted = 1;
    if ((int64_t)res != s->expect && zu_emit(r, ZU_EV_S_RESULT, ud, res, 0) < 0) return -1;
    if ((flags & ZU_CQE_F_MORE) && !s->notified) return 0;
    return zu_single_done(r, s, ud, s->notified ? (s->notified_res & ZU_NOTIF_COPIED) != 0 : 1);
}

/* Every available CQE into events, after those still in r->ev (a reap inside a compiled
 * datagram send leaves them there, Python takes them with its next reap and sets r->nev to 0);
 * returns their count or -errno (an io_uring_enter that failed, -ENOMEM: events lost). */
int64_t zc_uring_reap(zc_uring *r) {
    int64_t cached_key = -1, ret;
    zu_group *cached = NULL;
    if (zu_needs_enter(r) && (ret = zu_enter(r, 0, ZU_ENTER_GETEVENTS)) < 0) return ret;
    for (;;) {
        uint32_t head = *r->cq_khead;
        uint32_t tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
        if (head == tail) return r->nev;
        for (; head != tail; head++) {
            const struct zu_cqe *c = &r->cqes[head & r->cq_mask];
            uint64_t ud = c->user_data;
            int64_t key, i;
            int rc;
            if (ud < ZU_OWNED_UD) {
                rc = zu_single_cqe(r, (int64_t)ud, c->res, c->flags);
            } else if (ud < ZU_GROUP_UD) {
                rc = zu_owned_cqe(r, (int64_t)(ud & ~ZU_OWNED_UD), c->res, c->flags);
            } else {
                key = (int64_t)((ud & ~ZU_GROUP_UD) >> ZU_INDEX_BITS);
                i = (int64_t)(ud & ZU_INDEX_MASK);
                if (key != cached_key) {
                    cached = zu_map_get(&r->groups, key);
                    cached_key = cached ? key : -1;
                }
                if (!cached || i >= cached->n) continue;
                rc = zu_group_cqe(r, cached, key, i, c->res, c->flags);
                if (rc > 0) cached_key = -1; /* that ended the group: freed */
            }
            if (rc < 0) {
                __atomic_store_n(r->cq_khead, head + 1, __ATOMIC_RELEASE);
                return -ENOMEM;
            }
        }
        __atomic_store_n(r->cq_khead, tail, __ATOMIC_RELEASE); /* the kernel may reuse them */
        /* The CQ was full: overflowed CQEs are flushed back only on GETEVENTS. */
        if (!(__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & ZU_SQ_CQ_OVERFLOW)) return r->nev;
        if ((ret = zu_enter(r, 0, ZU_ENTER_GETEVENTS)) < 0) return ret;
    }
}
