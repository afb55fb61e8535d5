/* The datagram transport's per-call hot path in C: one send call plus its bookkeeping
 * (tracker, counters, the periodic error-queue drain), in one cffi call.
 *
 * What stays in Python (aiozc/datagram/): deciding when this path may run at all
 * (zc_dgram.blocked: not connected, something queued, closing, a send error being
 * classified), every error (the call returns -errno and Python does what the general path
 * does), the policy outside its zerocopy state, and resolving the futures the drain names.
 *
 * Buffers. The Python side passes the object itself (its id(): the address of the object in
 * CPython, alive for the call since the caller holds it) and the C side takes the buffer
 * export (PyObject_GetBuffer) that a memoryview or cffi's from_buffer() would take, and keeps
 * it in `held`, by the write's slot, until the write resolves. That is what a Python-side pin
 * cost (measured with callgrind: ffi.from_buffer ~1.46k instructions per datagram with its
 * deallocation, against ~0.1k here). The wrappers keep the GIL (_core_nogil.h), so the CPython
 * API may be called; the core is CPython-only (aiozc._sys.core). Exports of resolved writes
 * are ended by zc_dgram_release(), which Python calls before it resolves their futures (a
 * caller that awaited its future may resize or release its buffer at once) and never from
 * inside another call of this file: ending an export may drop the last reference to an
 * object, whose finalizer may run Python code, that may send on this very transport.
 *
 * The error-queue drain parses what the reference reader (aiozc/_sys/kernel.py
 * read_errqueue) parses. Zero-copy ranges reported as sent from our pages are applied here;
 * the first message of any other kind (a copied range, an ICMP or local error) is kept in
 * zc_dgram.msg_* and the drain stops, so Python handles it and reads the rest in order.
 */

/* (<linux/errqueue.h>, SO_EE_ORIGIN_ZEROCOPY: _core_errqueue.c) */
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

#define DG_DECLINED (-(1 << 20)) /* not for this path: Python's general path sends it */
#define DG_TRUNCATED (-(1 << 21)) /* the kernel took fewer bytes than the datagram */
#define DG_F_RESOLVED 1 /* the drain resolved writes: tracker out arrays */
#define DG_F_MESSAGE 2  /* a message for Python is in msg_* (the drain stopped there) */
#define DG_F_COPY 4     /* sent by copy: resolved now, no slot */
#define DG_F_PAUSE 8    /* pinned bytes above the high-water mark and the protocol not paused */
#define DG_F_FAILED 16  /* the drain's recvmsg failed (MSG_CTRUNC: msg_errno = EMSGSIZE) */
#define DG_SLOT_SHIFT 40 /* a result with flags: (flags << DG_SLOT_SHIFT) | slot or nbytes */
#define DG_COPY_ERRNO 4096 /* -errno - this: the failed send was a copying one */
#define DG_KIND (-(1 << 22)) /* not bytes/bytearray/memoryview, or no simple buffer: Python */
/* The io_uring engine's flags (zc_dgram.ring set, _core_udpring.c): */
#define DG_F_SUBMIT 32 /* the first SQE since the last submit: Python schedules the loop's submit */
#define DG_F_RING 64   /* a reap left events of other requests in the ring's buffer: Python reaps */
#define DG_F_UFAIL 128 /* SEND_ZCs failed (zc_dgram.fail): Python sends them again or fails them */

struct zc_uring;

typedef struct {
    Py_buffer view;
    PyObject *token; /* a strong reference, or NULL: the token is in the tracker's dict */
} zc_held;

static int held_empty(const zc_held *e) { return !e->view.obj && !e->token; }

typedef struct zc_dgram {
    int fd;
    int blocked;   /* Python: this path may not run now */
    int zerocopy;  /* Python: policy in its zerocopy state and engine msg_zerocopy */
    int paused;    /* Python: protocol paused (pause_writing called) */
    int64_t threshold, max_size, max_pinned, high_water, drain_every, since_drain;
    zc_tracker *t;
    /* counters (TransportStats fields of the same names) */
    int64_t zc_sends, zc_bytes, copy_sends, copy_bytes, peak_pinned_bytes, errqueue_reads;
    int64_t notifications, ids_zerocopy, drained_ids, messages;
    int64_t zc_writes, zc_write_bytes, copy_writes; /* writes resolved by resolve_alike (pyhot) */
    /* the message the drain stopped at (DG_F_MESSAGE) */
    uint32_t msg_errno, msg_info, msg_data;
    uint8_t msg_origin, msg_type, msg_code;
    uint8_t msg_addr[28];
    uint32_t msg_addrlen;
    /* buffer exports of zero-copy writes not yet resolved, and the futures of the writes
     * sendto_zc() made in C (_core_pyhot.c): held[s & (hcap - 1)] for hbase <= s < hnext
     * (view.obj and token NULL: nothing held for that slot) */
    zc_held *held;
    int64_t hcap, hbase, hnext, nheld;
    /* The io_uring engine (_core_udpring.c): its loop's ring, or NULL (send(2)); the SEND_ZC
     * msg_flags; the key of this transport's ZU_EV_D_PENDING events; what the ring's reap found
     * for this transport: released ids as (lo, hi, copied) u32 runs, failed sends as
     * (slot, ident, res, nbytes); dirty: an event said so since the last apply. */
    struct zc_uring *ring;
    uint32_t ring_flags;
    int64_t ring_tag;
    int dirty;
    int64_t *pend, npend, cappend, *fail, nfail, capfail;
} zc_dgram;

static int64_t dgram_ring_send(zc_dgram *d, const char *buf, int64_t n, Py_buffer *view);
static int64_t dgram_ring_before_copy(zc_dgram *d);
static int dgram_ring_apply(zc_dgram *d);
static void dgram_ring_unbind(zc_dgram *d);

zc_dgram *zc_dgram_new(int fd, zc_tracker *t) {
    zc_dgram *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->fd = fd;
    d->t = t;
    d->blocked = 1;
    return d;
}

/* Keep `view` (an export) for zero-copy slot `slot`; -1 if out of memory (nothing kept). */
ZC_HOT static int hold(zc_dgram *d, int64_t slot, Py_buffer *view) {
    if (slot == d->hnext && slot - d->hbase < d->hcap && d->hbase != d->hnext) { /* the next one */
        zc_held *e = &d->held[slot & (d->hcap - 1)];
        e->view = *view;
        e->token = NULL;
        d->hnext++;
        d->nheld++;
        return 0;
    }
    if (d->hbase == d->hnext) d->hbase = d->hnext = slot; /* empty: start at this slot */
    if (slot - d->hbase >= d->hcap) {
        int64_t ncap = d->hcap ? d->hcap : 64, s;
        zc_held *n;
        while (slot - d->hbase >= ncap) ncap *= 2;
        n = calloc((size_t)ncap, sizeof *n);
        if (!n) return -1;
        for (s = d->hbase; s < d->hnext; s++) n[s & (ncap - 1)] = d->held[s & (d->hcap - 1)];
        free(d->held);
        d->held = n;
        d->hcap = ncap;
    }
    for (; d->hnext <= slot; d->hnext++) {
        d->held[d->hnext & (d->hcap - 1)].view.obj = NULL;
        d->held[d->hnext & (d->hcap - 1)].token = NULL;
    }
    d->held[slot & (d->hcap - 1)].view = *view;
    d->nheld++;
    return 0;
}

/* End the export held for `slot`, if any. The entry is cleared first (see the file comment). */
static void held_trim(zc_dgram *d) {
    while (d->hbase < d->hnext && held_empty(&d->held[d->hbase & (d->hcap - 1)])) d->hbase++;
}

static void release_slot(zc_dgram *d, int64_t slot) {
    Py_buffer view;
    if (slot < d->hbase || slot >= d->hnext) return;
    view = d->held[slot & (d->hcap - 1)].view;
    if (!view.obj) return;
    d->held[slot & (d->hcap - 1)].view.obj = NULL;
    d->nheld--;
    held_trim(d);
    PyBuffer_Release(&view);
}

/* The token held for `slot` (a new reference for the caller), or NULL: none held here. */
static PyObject *take_token(zc_dgram *d, int64_t slot) {
    PyObject *token;
    if (slot < d->hbase || slot >= d->hnext) return NULL;
    token = d->held[slot & (d->hcap - 1)].token;
    d->held[slot & (d->hcap - 1)].token = NULL;
    if (token) held_trim(d);
    return token;
}

/* The object whose export is held for `slot` (borrowed), or NULL. */
static PyObject *held_obj(zc_dgram *d, int64_t slot) {
    if (slot < d->hbase || slot >= d->hnext) return NULL;
    return d->held[slot & (d->hcap - 1)].view.obj;
}

/* Keep `token` (a new reference, taken over) for `slot`, which hold() set up; -1: not held
 * (the caller keeps its reference). */
static int hold_token(zc_dgram *d, int64_t slot, PyObject *token) {
    if (slot < d->hbase || slot >= d->hnext || !d->held[slot & (d->hcap - 1)].view.obj) return -1;
    d->held[slot & (d->hcap - 1)].token = token;
    return 0;
}

/* End the exports of every slot the tracker has trimmed away (all resolved or abandoned). */
static void release_trimmed(zc_dgram *d) {
    while (d->nheld && d->hbase < d->hnext && d->hbase < d->t->base) {
        PyObject *token = take_token(d, d->hbase); /* resolved elsewhere: never, but not kept */
        release_slot(d, d->hbase);
        Py_XDECREF(token);
    }
}

/* End the exports of the writes the tracker's last call resolved (its out arrays), and of
 * every slot the tracker has trimmed away (all resolved or abandoned). Fields are read again
 * after each release: a finalizer may have sent meanwhile. */
int64_t zc_dgram_release(zc_dgram *d) {
    int64_t k, before = d->nheld;
    for (k = 0; k < d->t->nout && d->nheld; k++) release_slot(d, d->t->out_slot[k]);
    release_trimmed(d);
    return before - d->nheld;
}

/* Take what is held for each write of the tracker's out arrays, in one pass: its token
 * (tokens[k], a new reference, or NULL: none held here) and its export (views[k], ended by
 * the caller; obj NULL: none). Nothing of those writes is held afterwards, so a finalizer
 * that a release runs may send (and drain) meanwhile. */
static void take_out(zc_dgram *d, PyObject **tokens, Py_buffer *views) {
    int64_t k, n = d->t->nout, mask = d->hcap - 1;
    for (k = 0; k < n; k++) {
        int64_t slot = d->t->out_slot[k];
        zc_held *e;
        tokens[k] = NULL;
        views[k].obj = NULL;
        if (slot < d->hbase || slot >= d->hnext) continue;
        e = &d->held[slot & mask];
        tokens[k] = e->token;
        e->token = NULL;
        if (e->view.obj) {
            views[k] = e->view;
            e->view.obj = NULL;
            d->nheld--;
        }
    }
    held_trim(d);
}

void zc_dgram_free(zc_dgram *d) {
    int64_t s;
    dgram_ring_unbind(d);
    free(d->pend);
    free(d->fail);
    for (s = d->hbase; s < d->hnext; s++) {
        zc_held *e = &d->held[s & (d->hcap - 1)];
        if (e->view.obj) PyBuffer_Release(&e->view);
        Py_XDECREF(e->token);
    }
    free(d->held);
    free(d);
}

/* Read the error queue until empty (at most `limit` messages), applying zero-copy ranges.
 * Returns DG_F_* flags. drained_ids: ids the applied ranges covered (the policy hears). */
static int drained(zc_dgram *d, int flags) {
    return d->drained_ids ? flags | DG_F_RESOLVED : flags;
}

static int errqueue_read(zc_dgram *d, int limit, int flags);

/* With the io_uring engine the ring's findings come first (what the error queue holds then is
 * ICMP and local errors only). */
int zc_dgram_drain(zc_dgram *d, int limit) {
    int flags;
    d->since_drain = 0;
    if (d->ring) {
        flags = dgram_ring_apply(d);
        if (flags & (DG_F_MESSAGE | DG_F_FAILED)) return flags;
        return errqueue_read(d, limit, flags);
    }
    d->drained_ids = 0;
    d->t->nout = 0;
    d->t->out_uniform = 1;
    return errqueue_read(d, limit, 0);
}

/* errqueue_read's handler (zc_errqueue_batch): a zero-copy range sent from our pages is applied
 * here; anything else is kept in msg_* for Python, and the drain stops at it. */
static int dgram_on_ee(void *ctx, struct sock_extended_err ee, const struct msghdr *msg) {
    zc_dgram *d = ctx;
    if (ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 && !(ee.ee_code & 1)) {
        int64_t ids = (int64_t)(uint32_t)(ee.ee_data - ee.ee_info) + 1;
        if (zc_on_range_append(d->t, ee.ee_info, ee.ee_data) < 0) {
            d->msg_errno = ENOMEM;
            return DG_F_FAILED;
        }
        d->notifications++;
        d->ids_zerocopy += ids;
        d->drained_ids += ids;
        return 0;
    }
    d->msg_errno = ee.ee_errno;
    d->msg_origin = ee.ee_origin;
    d->msg_type = ee.ee_type;
    d->msg_code = ee.ee_code;
    d->msg_info = ee.ee_info;
    d->msg_data = ee.ee_data;
    d->msg_addrlen = msg->msg_namelen < sizeof d->msg_addr ? msg->msg_namelen : sizeof d->msg_addr;
    memcpy(d->msg_addr, msg->msg_name, d->msg_addrlen);
    d->messages++;
    return DG_F_MESSAGE;
}

/* Every recvmsg counts as a read, the empty or failed last one too; an interrupted one ends the
 * drain as an empty queue does (Python reads on at the next drain). */
static int errqueue_read(zc_dgram *d, int limit, int flags) {
    int r = zc_errqueue_batch(d->fd, limit, dgram_on_ee, d, NULL, &d->errqueue_reads);
    if (r > 0) {
        flags |= r; /* DG_F_MESSAGE, or DG_F_FAILED (out of memory) */
    } else if (r == ZC_EQ_TRUNCATED) {
        d->msg_errno = EMSGSIZE;
        flags |= DG_F_FAILED;
    } else if (r < 0 && r != -EINTR) {
        d->msg_errno = (uint32_t)-r;
        flags |= DG_F_FAILED;
    }
    return drained(d, flags);
}

/* Send one datagram of n bytes at buf on the connected socket, zero-copy where the rules
 * say so (the same as the general path's: policy state, threshold, pinned cap), and account
 * it. Returns (flags << DG_SLOT_SHIFT) | slot for a zero-copy datagram (its write resolves
 * later; without flags the result is the slot itself, 0 <= r < 2**40), (DG_F_COPY <<
 * DG_SLOT_SHIFT) | nbytes for a copied one (done), DG_DECLINED, DG_TRUNCATED, -errno
 * (a zero-copy send failed) or -errno - DG_COPY_ERRNO (a copying one): nothing was accounted,
 * the general path takes over. */
static int64_t dgram_send(zc_dgram *d, const char *buf, int64_t n, int allow_zc, Py_buffer *view) {
    int zerocopy, flags = 0;
    ssize_t sent;
    int64_t slot;
    if (d->blocked || n > d->max_size) return DG_DECLINED;
    zerocopy = allow_zc && d->zerocopy && n >= d->threshold;
    if (zerocopy && d->t->pinned >= d->max_pinned) return DG_DECLINED; /* copied: Python */
    if (d->ring) {
        if (zerocopy) return dgram_ring_send(d, buf, n, view);
        if ((sent = dgram_ring_before_copy(d)) < 0) return sent - DG_COPY_ERRNO;
    }
    sent = send(d->fd, buf, (size_t)n, zerocopy ? MSG_ZEROCOPY : 0);
    if (sent < 0) return zerocopy ? -errno : -errno - DG_COPY_ERRNO;
    if (sent != n) return DG_TRUNCATED;
    if (!zerocopy) {
        d->copy_sends++;
        d->copy_bytes += n;
        return ((int64_t)DG_F_COPY << DG_SLOT_SHIFT) | n;
    }
    slot = n > 0 ? sent_whole_zc(d->t, n) : ZC_ERR_NBYTES; /* (zc_sent_whole, inlined) */
    if (slot < 0) return slot; /* out of memory: the id was used, the transport fails */
    if (view && hold(d, slot, view) < 0) PyBuffer_Release(view); /* out of memory: not held */
    d->zc_sends++;
    d->zc_bytes += n;
    if (d->t->pinned > d->peak_pinned_bytes) d->peak_pinned_bytes = d->t->pinned;
    if (++d->since_drain >= d->drain_every) flags = zc_dgram_drain(d, 64);
    if (!d->paused && d->t->pinned > d->high_water) flags |= DG_F_PAUSE;
    return ((int64_t)flags << DG_SLOT_SHIFT) | slot; /* no flags: the slot itself */
}

int64_t zc_dgram_send(zc_dgram *d, const char *buf, int64_t n) { return dgram_send(d, buf, n, 1, NULL); }

/* The same for the object at address `obj` (bytes, bytearray or memoryview; DG_KIND for any
 * other type, or one that gives no simple buffer): its export is held until the write
 * resolves (see the file comment). sendto_zc(). */
int64_t zc_dgram_send_obj(zc_dgram *d, intptr_t obj) {
    PyObject *o = (PyObject *)obj;
    Py_buffer view;
    int64_t r;
    if (d->blocked) return DG_DECLINED;
    if (!(PyBytes_CheckExact(o) || PyByteArray_CheckExact(o) || PyMemoryView_Check(o))) return DG_KIND;
    if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* e.g. a non-contiguous or released memoryview: Python says why */
        return DG_KIND;
    }
    r = dgram_send(d, view.buf, view.len, 1, &view);
    if (r < 0 || ((r >> DG_SLOT_SHIFT) & DG_F_COPY)) PyBuffer_Release(&view); /* not held: copied, or not sent */
    return r;
}

/* sendto(): exact bytes may go zero-copy (immutable: holding them is as good as a copy),
 * anything else is sent by copy. Returns the flags only (0: nothing for Python to do), or
 * what zc_dgram_send_obj returns when nothing was sent. */
int64_t zc_dgram_sendto_obj(zc_dgram *d, intptr_t obj) {
    PyObject *o = (PyObject *)obj;
    Py_buffer view;
    int64_t r;
    int bytes;
    if (d->blocked) return DG_DECLINED;
    bytes = PyBytes_CheckExact(o);
    if (!(bytes || PyByteArray_CheckExact(o) || PyMemoryView_Check(o))) return DG_KIND;
    if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return DG_KIND;
    }
    r = dgram_send(d, view.buf, view.len, bytes, &view);
    if (r < 0 || ((r >> DG_SLOT_SHIFT) & DG_F_COPY)) PyBuffer_Release(&view);
    return r < 0 ? r : ((r >> DG_SLOT_SHIFT) & (DG_F_RESOLVED | DG_F_MESSAGE | DG_F_PAUSE | DG_F_FAILED |
                                                 DG_F_SUBMIT | DG_F_RING | DG_F_UFAIL));
}

/* The same, never zero-copy (sendto() of a buffer the caller may change once it returns). */
int64_t zc_dgram_send_copy(zc_dgram *d, const char *buf, int64_t n) { return dgram_send(d, buf, n, 0, NULL); }
