/* The completion tracker in C: a line-for-line port of aiozc/completions.py, which stays the
 * readable reference (its docstring explains the model). tests/test_completions_diff.py
 * drives both with the same random sequences and requires identical results.
 *
 * Differences of representation only:
 *  - writes that may still resolve live in a ring indexed by a "slot" number, increasing in
 *    open order (Python: the _pending dict keyed by _seq); a copied sent_whole() write resolves
 *    at once and takes no slot;
 *  - resolved writes are reported through the tracker's out_* arrays (slot numbers and the
 *    fields of their Completion) instead of a list of (token, Completion): the Python side
 *    keeps the tokens.
 */

#define W_OPEN 0
#define W_CLOSED 1
#define W_DONE 2

#define ZC_ERR_NOT_LIVE (-1)
#define ZC_ERR_CLOSED (-2)
#define ZC_ERR_NBYTES (-3)
#define ZC_ERR_EXCEEDS (-4)
#define ZC_ERR_INTERLEAVE (-5)
#define ZC_ERR_UNSENT (-6)
#define ZC_ERR_NOMEM (-7)

#define ID_SPACE ((int64_t)1 << 32)
#define COMPACT_MIN 32

typedef struct {
    int64_t nbytes, sent, zc_bytes;
    int64_t first, ids, remaining, copied;
    int64_t *done; /* (lo, hi) pairs: sorted, disjoint, never adjacent */
    uint32_t ndone, capdone;
    int state;
} zc_write;

typedef struct zc_tracker {
    int64_t next;  /* unwrapped id the kernel assigns next */
    int64_t outstanding, pinned, unexpected, npending;
    /* ring of writes: slot s lives at recs[s & (cap - 1)] for base <= s < next_slot */
    zc_write *recs;
    int64_t cap, base, next_slot;
    /* writes that consumed ids, by first id; entries before head are stale */
    int64_t *idx, *firsts;
    int64_t nidx, capidx, head;
    /* resolved writes of the last call, in open order */
    int64_t *out_slot, *out_nbytes, *out_ids, *out_copied;
    int *out_zc;
    int64_t nout, capout;
    int out_uniform; /* every out_* entry has the same completion fields */
} zc_tracker;

static zc_write *rec(zc_tracker *t, int64_t slot) { return &t->recs[slot & (t->cap - 1)]; }

static int grow(void **p, int64_t *cap, int64_t need, size_t item) {
    int64_t c = *cap ? *cap : 64;
    void *q;
    if (need <= *cap) return 0;
    while (c < need) c *= 2;
    q = realloc(*p, (size_t)c * item);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

zc_tracker *zc_tracker_new(uint32_t start_id) {
    zc_tracker *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->next = start_id;
    t->cap = 64;
    t->recs = calloc((size_t)t->cap, sizeof(zc_write));
    if (!t->recs) { free(t); return NULL; }
    return t;
}

void zc_tracker_free(zc_tracker *t) {
    int64_t s;
    if (!t) return;
    for (s = t->base; s < t->next_slot; s++) free(rec(t, s)->done);
    free(t->recs); free(t->idx); free(t->firsts);
    free(t->out_slot); free(t->out_nbytes); free(t->out_ids); free(t->out_copied); free(t->out_zc);
    free(t);
}

static int grow_out(zc_tracker *t, int64_t need) {
    int64_t c = t->capout, c2;
    if (need <= c) return 0;
    c2 = c;
    if (grow((void **)&t->out_slot, &c2, need, sizeof(int64_t))) return -1;
    c2 = c; if (grow((void **)&t->out_nbytes, &c2, need, sizeof(int64_t))) return -1;
    c2 = c; if (grow((void **)&t->out_ids, &c2, need, sizeof(int64_t))) return -1;
    c2 = c; if (grow((void **)&t->out_copied, &c2, need, sizeof(int64_t))) return -1;
    c2 = c; if (grow((void **)&t->out_zc, &c2, need, sizeof(int))) return -1;
    t->capout = c2;
    return 0;
}

/* A new slot for a write that may resolve later; NULL if out of memory. */
ZC_HOT static zc_write *new_slot(zc_tracker *t, int64_t *slot) {
    zc_write *w;
    if (t->next_slot - t->base == t->cap) {
        int64_t ncap = t->cap * 2, s;
        zc_write *n = calloc((size_t)ncap, sizeof(zc_write));
        if (!n) return NULL;
        for (s = t->base; s < t->next_slot; s++) n[s & (ncap - 1)] = *rec(t, s);
        free(t->recs);
        t->recs = n;
        t->cap = ncap;
    }
    *slot = t->next_slot++;
    w = rec(t, *slot);
    memset(w, 0, sizeof *w);
    t->npending++;
    return w;
}

static zc_write *live(zc_tracker *t, int64_t slot) {
    zc_write *w;
    if (slot < t->base || slot >= t->next_slot) return NULL;
    w = rec(t, slot);
    return w->state == W_DONE ? NULL : w;
}

int64_t zc_open(zc_tracker *t, int64_t nbytes) {
    int64_t slot;
    zc_write *w = new_slot(t, &slot);
    if (!w) return ZC_ERR_NOMEM;
    w->nbytes = nbytes;
    w->state = W_OPEN;
    return slot;
}

static int check_sent(zc_tracker *t, int64_t slot, int64_t nbytes, int64_t calls, zc_write **out) {
    zc_write *w = live(t, slot);
    if (!w) return ZC_ERR_NOT_LIVE;
    if (w->state != W_OPEN) return ZC_ERR_CLOSED;
    if (calls <= 0 || nbytes < calls) return ZC_ERR_NBYTES;
    if (w->sent + nbytes > w->nbytes) return ZC_ERR_EXCEEDS;
    *out = w;
    return 0;
}

static int index_append(zc_tracker *t, int64_t slot, int64_t first) {
    int64_t c = t->capidx;
    if (t->nidx == t->capidx) {
        if (grow((void **)&t->idx, &c, t->nidx + 1, sizeof(int64_t))) return -1;
        c = t->capidx;
        if (grow((void **)&t->firsts, &c, t->nidx + 1, sizeof(int64_t))) return -1;
        t->capidx = c;
    }
    t->idx[t->nidx] = slot;
    t->firsts[t->nidx++] = first;
    return 0;
}

/* on_sent(zerocopy=False): returns 0 or an error. */
int zc_on_sent_copy(zc_tracker *t, int64_t slot, int64_t nbytes) {
    zc_write *w;
    int err = check_sent(t, slot, nbytes, 1, &w);
    if (err) return err;
    w->sent += nbytes;
    return 0;
}

/* on_sent_many: returns the first id (u32) or an error (< 0). */
int64_t zc_on_sent_many(zc_tracker *t, int64_t slot, int64_t nbytes, int64_t ids) {
    zc_write *w;
    int64_t ident;
    int err = check_sent(t, slot, nbytes, ids, &w);
    if (err) return err;
    if (w->ids && w->first + w->ids != t->next) return ZC_ERR_INTERLEAVE;
    ident = t->next;
    if (w->ids == 0) {
        if (index_append(t, slot, ident)) return ZC_ERR_NOMEM;
        w->first = ident;
    }
    w->sent += nbytes;
    t->next = ident + ids;
    w->ids += ids;
    w->remaining += ids;
    w->zc_bytes += nbytes;
    t->outstanding += ids;
    t->pinned += nbytes;
    return ident & 0xFFFFFFFF;
}

static void out_reset(zc_tracker *t) { t->nout = 0; t->out_uniform = 1; }

ZC_HOT static void out_push(zc_tracker *t, int64_t slot, zc_write *w) {
    int64_t k = t->nout++;
    int zerocopy = w->nbytes > 0 && w->zc_bytes == w->nbytes && w->copied == 0;
    t->out_slot[k] = slot;
    t->out_nbytes[k] = w->nbytes;
    t->out_ids[k] = w->ids;
    t->out_copied[k] = w->copied;
    t->out_zc[k] = zerocopy;
    if (k && (w->nbytes != t->out_nbytes[0] || w->ids != t->out_ids[0] ||
              w->copied != t->out_copied[0] || zerocopy != t->out_zc[0]))
        t->out_uniform = 0;
}

static void trim(zc_tracker *t) {
    while (t->base < t->next_slot && rec(t, t->base)->state == W_DONE) t->base++;
}

/* Resolve w (slot) into the out arrays (room checked by the caller). */
static void resolve(zc_tracker *t, int64_t slot, zc_write *w) {
    w->state = W_DONE;
    if (w->done) { /* (a whole datagram's write never has one: no libc call per datagram) */
        free(w->done);
        w->done = NULL;
        w->ndone = w->capdone = 0;
    }
    t->npending--;
    t->pinned -= w->zc_bytes;
    out_push(t, slot, w);
}

static void compact(zc_tracker *t) {
    int64_t h = t->head, end = t->nidx;
    while (h < end && rec(t, t->idx[h])->state == W_DONE) h++;
    if (h == end) {
        t->nidx = 0;
        h = 0;
    } else if (h >= COMPACT_MIN && 2 * h >= end) {
        memmove(t->idx, t->idx + h, (size_t)(end - h) * sizeof(int64_t));
        memmove(t->firsts, t->firsts + h, (size_t)(end - h) * sizeof(int64_t));
        t->nidx = end - h;
        h = 0;
    }
    t->head = h;
}

/* sent_whole: returns the write's slot (>= 0) if it is zero-copy and resolves later, -100 if
 * it resolved now (copied: out arrays hold it, slot -1), or an error. */
#define ZC_RESOLVED_NOW (-100)
ZC_HOT static int64_t sent_whole_zc(zc_tracker *t, int64_t nbytes);
int64_t zc_sent_whole(zc_tracker *t, int64_t nbytes, int zerocopy) {
    if (nbytes <= 0) return ZC_ERR_NBYTES;
    if (!zerocopy) {
        zc_write tmp;
        if (grow_out(t, 1)) return ZC_ERR_NOMEM;
        memset(&tmp, 0, sizeof tmp);
        tmp.nbytes = tmp.sent = nbytes;
        out_reset(t);
        out_push(t, -1, &tmp);
        return ZC_RESOLVED_NOW;
    }
    return sent_whole_zc(t, nbytes);
}

/* sent_whole(zerocopy=True), nbytes > 0: inlined into the compiled send paths. */
ZC_HOT static int64_t sent_whole_zc(zc_tracker *t, int64_t nbytes) {
    int64_t slot, ident;
    zc_write *w;
    if (t->nidx == t->capidx) {
        int64_t c = t->capidx;
        if (grow((void **)&t->idx, &c, t->nidx + 1, sizeof(int64_t))) return ZC_ERR_NOMEM;
        c = t->capidx;
        if (grow((void **)&t->firsts, &c, t->nidx + 1, sizeof(int64_t))) return ZC_ERR_NOMEM;
        t->capidx = c;
    }
    w = new_slot(t, &slot);
    if (!w) return ZC_ERR_NOMEM;
    ident = t->next++;
    w->nbytes = w->sent = w->zc_bytes = nbytes;
    w->state = W_CLOSED;
    w->first = ident;
    w->ids = w->remaining = 1;
    t->idx[t->nidx] = slot;
    t->firsts[t->nidx++] = ident;
    t->outstanding++;
    t->pinned += nbytes;
    return slot;
}

/* close_write: 1 if it resolved now (out arrays), 0 if ids are outstanding, or an error. */
int zc_close(zc_tracker *t, int64_t slot) {
    zc_write *w = live(t, slot);
    if (!w) return ZC_ERR_NOT_LIVE;
    if (w->state != W_OPEN) return ZC_ERR_CLOSED;
    if (w->sent != w->nbytes) return ZC_ERR_UNSENT;
    if (grow_out(t, 1)) return ZC_ERR_NOMEM;
    w->state = W_CLOSED;
    out_reset(t);
    if (w->remaining) return 0;
    resolve(t, slot, w);
    if (w->ids) compact(t);
    trim(t);
    return 1;
}

/* First index in [lo, hi) of sorted a[] whose value is >= x (bisect_left), or > x (right). */
static int64_t bisect(const int64_t *a, int64_t lo, int64_t hi, int64_t x, int right) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (right ? a[mid] <= x : a[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* Record ids a..b of w as reported; returns how many were new (-1: out of memory). The
 * intervals are stored as (lo, hi) pairs in w->done. */
static int64_t mark_done(zc_write *w, int64_t a, int64_t b) {
    int64_t n = w->ndone, i, j, k, already = 0, lo, hi, *d = w->done;
    /* i: first interval with hi >= a - 1; j: first interval with lo > b + 1 */
    i = 0; j = n;
    { int64_t l = 0, h = n; while (l < h) { int64_t m = (l + h) / 2; if (d[2*m+1] < a - 1) l = m + 1; else h = m; } i = l; }
    { int64_t l = 0, h = n; while (l < h) { int64_t m = (l + h) / 2; if (d[2*m] <= b + 1) l = m + 1; else h = m; } j = l; }
    if (i == j) {
        if (n == w->capdone) {
            uint32_t c = w->capdone ? w->capdone * 2 : 4;
            int64_t *q = realloc(w->done, (size_t)c * 2 * sizeof(int64_t));
            if (!q) return -1;
            w->done = d = q;
            w->capdone = c;
        }
        memmove(d + 2 * (i + 1), d + 2 * i, (size_t)(n - i) * 2 * sizeof(int64_t));
        d[2 * i] = a;
        d[2 * i + 1] = b;
        w->ndone++;
        return b - a + 1;
    }
    for (k = i; k < j; k++) {
        int64_t ov = (b < d[2*k+1] ? b : d[2*k+1]) - (a > d[2*k] ? a : d[2*k]) + 1;
        if (ov > 0) already += ov;
    }
    lo = a < d[2 * i] ? a : d[2 * i];
    hi = b > d[2 * (j - 1) + 1] ? b : d[2 * (j - 1) + 1];
    d[2 * i] = lo;
    d[2 * i + 1] = hi;
    memmove(d + 2 * (i + 1), d + 2 * j, (size_t)(n - j) * 2 * sizeof(int64_t));
    w->ndone = (uint32_t)(n - (j - i - 1));
    return (b - a + 1) - already;
}

/* Unwrapped ids a..b reported; appends resolvable slots to *done. Returns the ids that were
 * outstanding (-1: out of memory). */
static int64_t complete(zc_tracker *t, int64_t a, int64_t b, int copied, int64_t **done,
                        int64_t *ndone, int64_t *capdone) {
    int64_t k, end = t->nidx, newly = 0;
    if (a > b) return 0;
    k = bisect(t->firsts, t->head, end, a, 1) - 1;
    if (k < t->head) k = t->head;
    while (k < end && t->firsts[k] <= b) {
        int64_t slot = t->idx[k], got;
        zc_write *w = rec(t, slot);
        k++;
        if (!w->remaining) continue;
        if (w->ids == 1 && w->state == W_CLOSED) {
            if (w->first < a) continue;
            got = 1;
        } else {
            int64_t run_end = w->first + w->ids - 1;
            if (run_end < a) continue;
            got = mark_done(w, a > w->first ? a : w->first, b < run_end ? b : run_end);
            if (got < 0) return -1;
        }
        if (!got) continue;
        w->remaining -= got;
        t->outstanding -= got;
        newly += got;
        if (copied) w->copied += got;
        if (!w->remaining && w->state == W_CLOSED) {
            if (grow((void **)done, capdone, *ndone + 1, sizeof(int64_t))) return -1;
            (*done)[(*ndone)++] = slot;
        }
    }
    return newly;
}

static int cmp_i64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* What complete() and on_range() do for the common range, in one pass: unwrapped ids u_lo ..
 * u_lo + length - 1 are exactly the ids of the writes at the head of the index, each a closed
 * write of one id still outstanding, in open order too (whole datagrams released in order). Returns how many
 * resolved (out arrays), ZC_ERR_NOMEM, or RUN_GENERAL with nothing changed: not that case. ~0.05k
 * instructions per datagram less than the general path (callgrind). */
#define RUN_GENERAL (-1000)
static int64_t on_range_run(zc_tracker *t, int64_t u_lo, int64_t length, int copied) {
    int64_t h = t->head, j;
    if (length > t->nidx - h) return RUN_GENERAL;
    for (j = 0; j < length; j++) {
        zc_write *w = rec(t, t->idx[h + j]);
        if (t->firsts[h + j] != u_lo + j || w->ids != 1 || w->state != W_CLOSED || w->remaining != 1 ||
            (j && t->idx[h + j] < t->idx[h + j - 1])) /* (they resolve in open order: slots) */
            return RUN_GENERAL;
    }
    if (grow_out(t, t->nout + length)) return ZC_ERR_NOMEM;
    for (j = 0; j < length; j++) {
        int64_t slot = t->idx[h + j];
        zc_write *w = rec(t, slot);
        w->remaining = 0;
        if (copied) w->copied += 1;
        resolve(t, slot, w);
    }
    t->outstanding -= length;
    compact(t);
    trim(t);
    return length;
}

/* on_range: returns how many writes resolved (out arrays), or an error. With `append` the
 * resolved writes are added to those already in the out arrays (a drain of many ranges). */
static int64_t on_range(zc_tracker *t, uint32_t lo, uint32_t hi, int copied, int append) {
    int64_t length = (int64_t)((uint32_t)(hi - lo)) + 1, newly = 0, nd = 0, capd = 0, i, r;
    int64_t *done = NULL;
    if (!append) out_reset(t);
    if (t->outstanding) {
        int64_t window = t->next - ID_SPACE;
        int64_t u_lo = window + ((lo - window) & 0xFFFFFFFF);
        int64_t u_hi = u_lo + length - 1;
        if (u_hi < t->next && (r = on_range_run(t, u_lo, length, copied)) != RUN_GENERAL) return r;
        r = complete(t, u_lo, u_hi < t->next - 1 ? u_hi : t->next - 1, copied, &done, &nd, &capd);
        if (r < 0) goto nomem;
        newly += r;
        if (u_hi >= t->next) {
            r = complete(t, window, u_hi - ID_SPACE, copied, &done, &nd, &capd);
            if (r < 0) goto nomem;
            newly += r;
        }
    }
    t->unexpected += length - newly;
    if (!nd) { free(done); return 0; }
    if (grow_out(t, t->nout + nd)) goto nomem;
    for (i = 1; i < nd; i++)
        if (done[i] < done[i - 1]) { qsort(done, (size_t)nd, sizeof(int64_t), cmp_i64); break; }
    for (i = 0; i < nd; i++) resolve(t, done[i], rec(t, done[i]));
    free(done);
    compact(t);
    trim(t);
    return nd;
nomem:
    free(done);
    return ZC_ERR_NOMEM;
}

/* abandon: every unresolved write's slot goes to out_slot, in open order; returns the count. */
int64_t zc_on_range(zc_tracker *t, uint32_t lo, uint32_t hi, int copied) {
    return on_range(t, lo, hi, copied, 0);
}

/* on_range(copied=False) adding to the out arrays (the datagram drain). */
static int64_t zc_on_range_append(zc_tracker *t, uint32_t lo, uint32_t hi) {
    return on_range(t, lo, hi, 0, 1);
}

int64_t zc_abandon(zc_tracker *t) {
    int64_t s, n = 0;
    out_reset(t);
    if (grow_out(t, t->npending)) return ZC_ERR_NOMEM;
    for (s = t->base; s < t->next_slot; s++) {
        zc_write *w = rec(t, s);
        if (w->state == W_DONE) continue;
        w->state = W_DONE;
        w->remaining = 0;
        free(w->done);
        w->done = NULL;
        w->ndone = w->capdone = 0;
        t->out_slot[n++] = s;
    }
    t->nout = n;
    t->out_uniform = 0;
    t->npending = 0;
    t->base = t->next_slot;
    t->nidx = t->head = 0;
    t->outstanding = 0;
    t->pinned = 0;
    return n;
}

/* Per-write read-only state (WriteHandle.zc_sends, repr). */
int64_t zc_write_ids(zc_tracker *t, int64_t slot) {
    zc_write *w = live(t, slot);
    return w ? w->ids : -1;
}
