/* The compiled per-call datagram path (_core_dgram.c, _core_pyhot.c) on the io_uring engine:
 * sendto_zc() fills a SEND_ZC SQE where the MSG_ZEROCOPY engine calls send(2), and the ring's
 * reap (_core_uring.c) applies its completions to the transport's tracker the way the
 * error-queue drain does, without a Python call per datagram.
 *
 * Before (the general path, aiozc/datagram/uring.py and engines/io_uring.py): a request list,
 * a from_buffer handle, a _Held, the tracker's open/close and a dict entry per datagram, and an
 * S_DONE event per datagram dispatched in Python: ~40 Python calls, 75.6k / 77.1k user
 * instructions per sendto_zc (asyncio / uvloop, callgrind).
 *
 * How: the datagram is accounted when its SQE is filled (a datagram goes whole or not at all,
 * as uring.py's _submit_datagram_zc does), its export held by the write's slot as on the
 * MSG_ZEROCOPY path, and the request is an entry of the ring's owned table (user_data
 * ZU_OWNED_UD | index) that names the zc_dgram (`owner`), the tracker id and the slot. Its result CQE is expected to be the datagram's size: any other
 * result goes to zc_dgram.fail (Python sends it again or fails it, as _datagram_zc_result
 * does) and voids the id's release; its notification CQE adds the id to zc_dgram.pend, merged
 * into runs of consecutive ids. A transport that had nothing pending gets one ZU_EV_D_PENDING
 * event (Python's LoopRing._dispatch calls its _hot_ring_pending), or, when the reap ran inside
 * its own send, applies them there (dgram_ring_apply, which is zc_dgram_drain's first half for
 * this engine): the tracker's out arrays then name the resolved writes exactly as after a drain
 * of the error queue, and the same code resolves them (F_RESOLVED, _core_pymeth.c's quick path).
 * A copied release stops the apply as a copied error-queue range stops the drain: a message
 * for Python (on_zerocopy_range with copied=True, which the policy must hear).
 *
 * Submits: every drain_every-th datagram submits, reaps and applies (the MSG_ZEROCOPY path
 * drains every 64th); the first SQE after a submit asks Python (DG_F_SUBMIT) to schedule the
 * loop iteration's submit, as LoopRing.send_zc does, so that a short burst goes too; at most
 * once until that submit ran (zc_uring.submit_asked, cleared by Python's submit).
 */

/* Mark `d` as having results to apply: one event per transport until it applies them. */
static int ring_dirty(zc_uring *r, zc_dgram *d) {
    if (d->dirty) return 0;
    d->dirty = 1;
    return zu_emit(r, ZU_EV_D_PENDING, d->ring_tag, 0, 0);
}

static int grow64(int64_t **p, int64_t *cap, int64_t need) {
    int64_t c = *cap ? *cap : 48;
    int64_t *q;
    if (need <= *cap) return 0;
    while (c < need) c *= 2;
    q = realloc(*p, (size_t)c * sizeof *q);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

ZC_HOT static int ring_released(zc_uring *r, zc_dgram *d, int64_t ident, int copied) {
    int64_t *last = d->npend ? &d->pend[d->npend - 3] : NULL;
    if (last && last[2] == copied && ((last[1] + 1) & 0xFFFFFFFFll) == ident) {
        last[1] = ident;
    } else {
        if (grow64(&d->pend, &d->cappend, d->npend + 3) < 0) return -1;
        d->pend[d->npend++] = ident;
        d->pend[d->npend++] = ident;
        d->pend[d->npend++] = copied;
    }
    return ring_dirty(r, d);
}

static int ring_failed(zc_uring *r, zc_dgram *d, const zu_single *s, int32_t res) {
    if (grow64(&d->fail, &d->capfail, d->nfail + 4) < 0) return -1;
    d->fail[d->nfail++] = s->slot;
    d->fail[d->nfail++] = s->ident;
    d->fail[d->nfail++] = res;
    d->fail[d->nfail++] = s->expect;
    return ring_dirty(r, d);
}

/* A free entry of the owned table (zeroed, marked in use), or -1 out of memory. */
static int64_t owned_new(zc_uring *r) {
    int64_t index = r->owned_free - 1;
    if (index >= 0) {
        r->owned_free = r->owned[index].free_next;
    } else {
        if (r->owned_n == r->owned_cap) {
            int64_t cap = r->owned_cap ? r->owned_cap * 2 : 256;
            zu_single *q = realloc(r->owned, (size_t)cap * sizeof *q);
            if (!q) return -1;
            r->owned = q;
            r->owned_cap = cap;
        }
        index = r->owned_n++;
    }
    memset(&r->owned[index], 0, sizeof r->owned[index]);
    r->owned[index].owned = 1;
    return index;
}

static void owned_free(zc_uring *r, int64_t index) {
    r->owned[index].owned = 0;
    r->owned[index].free_next = r->owned_free;
    r->owned_free = index + 1;
}

static int owned_done(zc_uring *r, zu_single *s, int64_t index, int copied) {
    int rc = s->owner && !s->voided ? ring_released(r, s->owner, s->ident, copied) : 0;
    owned_free(r, index);
    return rc;
}

/* zu_single_cqe for a compiled datagram path's send (the same F_MORE / F_NOTIF rules). */
static int zu_owned_cqe(zc_uring *r, int64_t index, int32_t res, uint32_t flags) {
    zu_single *s;
    if (index < 0 || index >= r->owned_n || !r->owned[index].owned) return 0;
    s = &r->owned[index];
    if (flags & ZU_CQE_F_NOTIF) {
        if (!s->resulted) {
            s->notified = 1;
            s->notified_res = res;
            return 0;
        }
        return owned_done(r, s, index, (res & ZU_NOTIF_COPIED) != 0);
    }
    s->resulted = 1;
    if ((int64_t)res != s->expect) {
        s->voided = 1; /* its id is resolved by Python with the failure: never released here */
        if (s->owner && ring_failed(r, s->owner, s, res) < 0) return -1;
    }
    if ((flags & ZU_CQE_F_MORE) && !s->notified) return 0;
    return owned_done(r, s, index, s->notified ? (s->notified_res & ZU_NOTIF_COPIED) != 0 : 1);
}

/* Drop the ZU_EV_D_PENDING events of `d` still in the ring's buffer (it applied them). */
static void ring_forget_events(zc_uring *r, const zc_dgram *d) {
    int64_t k, kept = 0;
    for (k = 0; k < r->nev; k++) {
        int64_t *e = &r->ev[k * 4];
        if (e[0] == ZU_EV_D_PENDING && e[1] == d->ring_tag) continue;
        if (kept != k) memcpy(&r->ev[kept * 4], e, 4 * sizeof *e);
        kept++;
    }
    r->nev = kept;
}

/* Apply the released runs to the tracker (its out arrays, as the error-queue drain does) up
 * to the first copied one (kept in msg_* for Python: DG_F_MESSAGE); DG_F_UFAIL when sends
 * failed. Returns DG_F_* flags. */
static int dgram_ring_apply(zc_dgram *d) {
    int flags = 0;
    int64_t k;
    d->drained_ids = 0;
    d->t->nout = 0;
    d->t->out_uniform = 1;
    d->dirty = 0;
    for (k = 0; k < d->npend; k += 3) {
        uint32_t lo = (uint32_t)d->pend[k], hi = (uint32_t)d->pend[k + 1];
        int64_t ids = (int64_t)(uint32_t)(hi - lo) + 1;
        if (d->pend[k + 2]) {
            d->msg_errno = 0;
            d->msg_origin = SO_EE_ORIGIN_ZEROCOPY;
            d->msg_type = 0;
            d->msg_code = 1; /* SO_EE_CODE_ZEROCOPY_COPIED */
            d->msg_info = lo;
            d->msg_data = hi;
            d->msg_addrlen = 0;
            d->messages++;
            flags |= DG_F_MESSAGE;
            k += 3;
            break;
        }
        if (zc_on_range_append(d->t, lo, hi) < 0) {
            d->msg_errno = ENOMEM;
            flags |= DG_F_FAILED;
            k += 3;
            break;
        }
        d->notifications++;
        d->ids_zerocopy += ids;
        d->drained_ids += ids;
    }
    if (k) {
        memmove(d->pend, d->pend + k, (size_t)(d->npend - k) * sizeof *d->pend);
        d->npend -= k;
    }
    if (d->ring) ring_forget_events(d->ring, d);
    if (d->nfail) flags |= DG_F_UFAIL;
    return drained(d, flags);
}

/* A copying send goes after the SEND_ZCs queued before it (IoUringEngine.send): 0 or -errno. */
static int64_t dgram_ring_before_copy(zc_dgram *d) {
    int64_t ret = zc_uring_pending(d->ring) ? zc_uring_submit(d->ring) : 0;
    return ret < 0 ? ret : 0;
}

/* dgram_send's zero-copy send on this engine: see the file comment. The same results as a
 * send(2) there ((flags << DG_SLOT_SHIFT) | slot, or -errno with nothing accounted). */
static int64_t dgram_ring_send(zc_dgram *d, const char *buf, int64_t n, Py_buffer *view) {
    zc_uring *r = d->ring;
    zu_single *s;
    int64_t ret = zu_room(r), index, slot, ident;
    int flags = 0;
    if (ret < 0) return ret; /* -EAGAIN: the SQ is full even after a submit, Python queues it */
    if ((index = owned_new(r)) < 0) return -ENOMEM;
    ident = d->t->next & 0xFFFFFFFFll;
    slot = n > 0 ? sent_whole_zc(d->t, n) : ZC_ERR_NBYTES; /* (zc_sent_whole, inlined) */
    if (slot < 0) {
        owned_free(r, index);
        return -ENOMEM; /* nothing was filled: the general path sends it */
    }
    s = &r->owned[index];
    s->expect = n;
    s->owned = 1;
    s->owner = d;
    s->ident = ident;
    s->slot = slot;
    zu_fill(r, d->fd, d->ring_flags, buf, n, NULL, 0, ZU_OWNED_UD | (uint64_t)index);
    if (view && hold(d, slot, view) < 0) PyBuffer_Release(view); /* out of memory: not held */
    d->zc_sends++;
    d->zc_bytes += n;
    if (d->t->pinned > d->peak_pinned_bytes) d->peak_pinned_bytes = d->t->pinned;
    if (zc_uring_pending(r) == 1) flags |= DG_F_SUBMIT;
    if (++d->since_drain >= d->drain_every) {
        d->since_drain = 0;
        flags &= ~DG_F_SUBMIT;
        if ((ret = zc_uring_submit(r)) >= 0) ret = zc_uring_reap(r);
        if (ret < 0) {
            d->msg_errno = (uint32_t)-ret;
            flags |= DG_F_FAILED;
        } else {
            if (d->dirty) flags |= dgram_ring_apply(d);
            if (r->nev) flags |= DG_F_RING;
            if (zc_uring_pending(r)) flags |= DG_F_SUBMIT; /* the kernel left some queued */
        }
    }
    /* Asked once per loop iteration: the submit Python scheduled the first time is still to
     * run (in a burst the loop does not iterate: one Python call per drain cycle saved, ~3.3k
     * instructions per 64 datagrams, callgrind). */
    if (flags & DG_F_SUBMIT) {
        if (r->submit_asked) flags &= ~DG_F_SUBMIT;
        r->submit_asked = 1;
    }
    if (!d->paused && d->t->pinned > d->high_water) flags |= DG_F_PAUSE;
    return ((int64_t)flags << DG_SLOT_SHIFT) | slot;
}

/* The sends of `d` still in its ring no longer name it (it is freed or leaves the engine):
 * their completions are dropped, their exports end with the transport's (as on the
 * MSG_ZEROCOPY path, the kernel keeps the pages it pinned). */
static void dgram_ring_unbind(zc_dgram *d) {
    zc_uring *r = d->ring;
    int64_t i;
    if (!r) return;
    for (i = 0; i < r->owned_n; i++)
        if (r->owned[i].owned && r->owned[i].owner == d) r->owned[i].owner = NULL;
    ring_forget_events(r, d);
    d->ring = NULL;
}

/* Send the datagrams of `d` through `r` (NULL: through send(2) again) with SEND_ZC flags
 * `flags`, its events keyed `tag`. */
void zc_dgram_set_uring(zc_dgram *d, zc_uring *r, int64_t tag, uint32_t flags) {
    if (d->ring != r) dgram_ring_unbind(d);
    d->ring = r;
    d->ring_tag = tag;
    d->ring_flags = flags;
    d->since_drain = 0;
}
