/* The TCP transport's queued zero-copy write_zc() in C: the common case of a held write the
 * policy wants zero-copy (aiozc/streamheld.py, streamsend.py, base.py are the reference).
 *
 * In Python a 64 KiB write_zc() sent with MSG_ZEROCOPY took ~34 calls (the policy, pinned
 * bytes, peer-window gates, the tracker wrappers, the engine's send, the segment and its
 * completion's bookkeeping): ~77k user instructions per write (callgrind, both loops). Here
 * the same steps run in the same order on the same state for the case that is all of it on a
 * route that sends from the caller's pages: nothing queued, the protocol not paused, the
 * policy (a ZeroCopyPolicy) in its zerocopy state, where wants_zerocopy(n) is n >= threshold
 * and on_sent() changes nothing, the pinned bytes below max_pinned_bytes, the socket off the
 * loop's selector (_errqueue_quiet false), the MSG_ZEROCOPY engine and the compiled tracker
 * (zc_tcp_zc_bind sets that up). The future, the tracker's record and its token (a _Held)
 * are made here; the send, the tracker's on_sent and close, the stats and _zc_since_drain
 * are counted here (in the TcpHot, whose fields the Python side reads through properties).
 *
 * Anything else goes to Python where Python would be: a peer window too small
 * (_send_held_now), a send that moved less than the write or failed (_zc_continue, with the
 * record and the counts made here), an error-queue drain due (_drain_errqueue, then
 * _after_flush and _maybe_pause_protocol, as Python); any other state before the send goes
 * to the Python method whole (TCPZC_PASS). */

#include <netinet/tcp.h>

#define TZ_MIN_PEER_WINDOW (32 * 1024) /* streamsend._MIN_PEER_WINDOW */
#define TZ_PEER_WINDOW_SPAN 1.0 /* streamsend._PEER_WINDOW_SPAN */
#define TZ_PEER_WINDOW_MAX_AGE 0.01 /* streamsend._PEER_WINDOW_MAX_AGE */
#define TZ_TCPI_SND_WND 228 /* streamsend._TCPI_SND_WND: tcpi_snd_wnd's offset in struct tcp_info */
#define TZ_EPOLLIN 1LL
#define TZ_EPOLLET (1LL << 31)

static struct {
    PyTypeObject *held_type, *policy_type;
    Py_ssize_t held_future, held_view; /* the _Held slots' offsets */
    PyObject *zerocopy; /* ZeroCopyState.ZEROCOPY */
    PyObject *make_completion, *invalid_state; /* ctracker._completion, asyncio.InvalidStateError */
    PyObject *socket_error, *truncated; /* kernel.SocketError, kernel.ErrQueueTruncated */
    PyObject *kernel_dict, *read_errqueue; /* vars(kernel), its own read_errqueue (a test may replace it) */
    PyObject *policy, *state, *paused, *reading, *eof_received, *rx_blocked, *hup, *registered_mask,
        *zc_continue, *send_held_now, *drain, *after_flush, *maybe_pause, *update_mask, *resolve_closed,
        *release, *done, *owner, *sock, *errqueue_ok, *on_range, *on_message, *fatal, *read_name;
} tz;

/* The zerocopy state, read from the instance dict: the protocol not paused, the policy a
 * ZeroCopyPolicy whose state is ZEROCOPY. 1 yes, 0 no (Python's path), -1 with an exception. */
static int tz_state_ok(PyObject *dict) {
    PyObject *v = PyDict_GetItemWithError(dict, tz.paused), *pdict;
    int ok;
    if (v != Py_False) return PyErr_Occurred() ? -1 : 0;
    v = PyDict_GetItemWithError(dict, tz.policy);
    if (!v || Py_TYPE(v) != tz.policy_type) return PyErr_Occurred() ? -1 : 0;
    if (!(pdict = PyObject_GenericGetDict(v, NULL))) return -1;
    ok = PyDict_GetItemWithError(pdict, tz.state) == tz.zerocopy;
    Py_DECREF(pdict);
    return ok ? 1 : PyErr_Occurred() ? -1 : 0;
}

/* streamsend._read_peer_window with the socket open. */
static long long tz_read_window(int fd) {
    unsigned char info[TZ_TCPI_SND_WND + 4];
    socklen_t len = sizeof info;
    uint32_t wnd;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) < 0 || len < sizeof info) return TZ_MIN_PEER_WINDOW;
    memcpy(&wnd, info + TZ_TCPI_SND_WND, sizeof wnd);
    return (long long)wnd;
}

/* time.monotonic(), as CPython computes it (_PyTime_AsSecondsDouble of CLOCK_MONOTONIC's ns):
 * asyncio's loop.time(), without its Python frame (~0.4k instructions per write). */
static double tz_monotonic(void) {
    struct timespec ts;
    int64_t ns;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (ns % 1000000000 == 0) return (double)(ns / 1000000000);
    return (double)ns / 1e9;
}

/* streamsend._peer_window: the peak, or -1 with an exception (loop.time() raised). */
static long long tz_peer_window(tcp_hot *h) {
    PyObject *t;
    double now;
    if (!h->loop_time) {
        now = tz_monotonic();
    } else {
        if (!(t = PyObject_CallNoArgs(h->loop_time))) return -1;
        now = PyFloat_AsDouble(t);
        Py_DECREF(t);
        if (now == -1.0 && PyErr_Occurred()) return -1;
    }
    if (now - h->peer_window_at >= TZ_PEER_WINDOW_MAX_AGE) {
        long long seen;
        h->peer_window_at = now;
        seen = tz_read_window(h->fd);
        if (seen >= h->peer_window_peak || now - h->peer_window_peak_at >= TZ_PEER_WINDOW_SPAN) {
            h->peer_window_peak = seen;
            h->peer_window_peak_at = now;
        }
    }
    return h->peer_window_peak;
}

/* _Held(future, view), its slots set directly (no __init__ frame). A new reference. */
static PyObject *tz_held(PyObject *future, PyObject *view) {
    PyObject *held = tz.held_type->tp_alloc(tz.held_type, 0);
    if (!held) return NULL;
    *(PyObject **)((char *)held + tz.held_future) = Py_NewRef(future);
    *(PyObject **)((char *)held + tz.held_view) = Py_NewRef(view);
    return held;
}

/* send(MSG_ZEROCOPY) as socket.send: bytes sent, 0 when the socket is full (EAGAIN) or on an
 * error, which is then in *exc (a new reference: what sock.send raises, EINTR retried after
 * the signal handlers as PEP 475, whose exception it may also be). */
static Py_ssize_t tz_send(int fd, const void *buf, Py_ssize_t n, PyObject **exc) {
    PyObject *type, *tb;
    for (;;) {
        ssize_t r = send(fd, buf, (size_t)n, MSG_ZEROCOPY);
        if (r >= 0) return (Py_ssize_t)r;
        if (errno == EINTR && PyErr_CheckSignals() == 0) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (!PyErr_Occurred()) PyErr_SetFromErrno(PyExc_OSError);
        PyErr_Fetch(&type, exc, &tb);
        PyErr_NormalizeException(&type, exc, &tb);
        if (tb && *exc) PyException_SetTraceback(*exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        return 0;
    }
}

/* base._account_send for a zero-copy send of `sent` > 0 bytes: the tracker's on_sent, then
 * _count_zc_sends and _zc_since_drain (the policy's on_sent does nothing in its zerocopy state). */
static int tz_count_sent(tcp_hot *h, int64_t slot, Py_ssize_t sent) {
    if (zc_on_sent_many(h->zc_t, slot, sent, 1) < 0) {
        PyErr_SetString(PyExc_AssertionError, "aiozc: the compiled TCP path's write is not live");
        return -1;
    }
    h->zc_sends += 1;
    h->zc_bytes += sent;
    h->pinned_bytes = h->zc_t->pinned;
    if (h->pinned_bytes > h->peak_pinned_bytes) h->peak_pinned_bytes = h->pinned_bytes;
    h->zc_since_drain += 1;
    return 0;
}

static int tz_call(PyObject *self, PyObject *name, PyObject *const *args, size_t nargs) {
    return tcp_call_void(self, name, args, nargs);
}

/* A bool attribute's truth, from the instance dict or else the class (streamread's
 * _rx_blocked is a class default): 0/1, -1 with an exception, -2 neither a bool. */
static int tz_truth(PyObject *self, PyObject *dict, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (!v && PyErr_Occurred()) return -1;
    if (!v) v = _PyType_Lookup(Py_TYPE(self), name);
    return v == Py_True ? 1 : v == Py_False ? 0 : -2;
}

/* _update_mask() with nothing queued and not closing: _mask() computed here, the Python method
 * called only if it differs from _registered_mask (or a piece of state is not there). */
static int tz_update_mask(PyObject *self, PyObject *dict) {
    int reading = tz_truth(self, dict, tz.reading), eof = tz_truth(self, dict, tz.eof_received),
        blocked = tz_truth(self, dict, tz.rx_blocked), hup = tz_truth(self, dict, tz.hup), read;
    PyObject *reg;
    long long mask;
    if (reading == -1 || eof == -1 || blocked == -1 || hup == -1) return -1;
    reg = PyDict_GetItemWithError(dict, tz.registered_mask);
    if (reading < 0 || eof < 0 || blocked < 0 || hup < 0 || !reg || !PyLong_CheckExact(reg))
        return PyErr_Occurred() ? -1 : tz_call(self, tz.update_mask, NULL, 0);
    read = reading && !eof && !blocked;
    mask = (read ? TZ_EPOLLIN : 0) | (hup && !read ? TZ_EPOLLET : 0);
    if (mask == PyLong_AsLongLong(reg)) return 0;
    return PyErr_Occurred() ? -1 : tz_call(self, tz.update_mask, NULL, 0);
}

/* The write was sent whole: _advance_held -> _close_write, then _flush's _after_flush and
 * _enqueue_held's _maybe_pause_protocol. Without a drain or a resolution in between (Python
 * code) these are _update_mask alone: the protocol is not paused, nothing is queued (so
 * get_write_buffer_size() is 0), the transport is not closing. 0, or -1 with an exception. */
static int tz_finish(PyObject *self, tcp_hot *h, int64_t slot, PyObject *dict) {
    int res = zc_close(h->zc_t, slot), python = 0;
    PyObject *count;
    if (res < 0) {
        PyErr_SetString(PyExc_AssertionError, "aiozc: the compiled TCP path's write did not close");
        return -1;
    }
    if (res > 0) { /* (every id already reported: not seen, the drain runs after the send) */
        if (!(count = PyLong_FromLong(res))) return -1;
        res = tz_call(self, tz.resolve_closed, &count, 1);
        Py_DECREF(count);
        if (res < 0) return -1;
        python = 1;
    } else {
        h->pinned_bytes = h->zc_t->pinned;
    }
    if (h->zc_since_drain >= h->drain_every) {
        if (tz_call(self, tz.drain, NULL, 0) < 0) return -1;
        python = 1;
    }
    if (!python) return tz_update_mask(self, dict);
    if (tz_call(self, tz.after_flush, NULL, 0) < 0) return -1;
    return tz_call(self, tz.maybe_pause, NULL, 0);
}

/* A held write through the tracker: its record, its token, its zero-copy send, then what
 * follows it (tz_finish, or Python's _zc_continue). 0, or -1 with an exception. */
static int tz_send_held(PyObject *self, tcp_hot *h, PyObject *view, PyObject *future, PyObject *dict) {
    Py_buffer *vb = PyMemoryView_GET_BUFFER(view);
    PyObject *held, *key, *exc = NULL, *args[5];
    Py_ssize_t sent;
    int64_t slot;
    int r;
    if (!(held = tz_held(future, view))) return -1;
    if ((slot = zc_open(h->zc_t, vb->len)) < 0) {
        Py_DECREF(held);
        PyErr_NoMemory();
        return -1;
    }
    key = PyLong_FromLongLong(slot);
    r = key ? PyDict_SetItem(h->tokens, key, held) : -1;
    Py_DECREF(held);
    if (r < 0) {
        Py_XDECREF(key);
        return -1;
    }
    sent = tz_send(h->fd, vb->buf, vb->len, &exc);
    if (sent > 0 && tz_count_sent(h, slot, sent) < 0) r = -1;
    else if (sent == vb->len) r = tz_finish(self, h, slot, dict);
    else {
        args[0] = view;
        args[1] = future;
        args[2] = key;
        args[3] = PyLong_FromSsize_t(sent);
        args[4] = exc ? exc : Py_None;
        r = args[3] ? tz_call(self, tz.zc_continue, args, 5) : -1;
        Py_XDECREF(args[3]);
    }
    Py_XDECREF(exc);
    Py_DECREF(key);
    return r;
}

static PyObject *tcpzc_write(PyObject *self, tcp_hot *h, PyObject *buf, const char *p, Py_ssize_t n) {
    PyObject *dict, *view = NULL, *future = NULL, *args[2];
    Py_buffer *vb;
    Py_ssize_t queued;
    long long window;
    int r;
    (void)p;
    if (h->direct_max <= 0 || n < h->zc_threshold || h->errqueue_quiet || h->zc_t->pinned >= h->max_pinned)
        return TCPZC_PASS;
    if ((queued = PyObject_Size(h->queue)) != 0) return queued < 0 ? NULL : TCPZC_PASS;
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    if ((r = tz_state_ok(dict)) <= 0) goto pass;
    /* byte_view(buf): a 1-D unsigned-byte view; another shape or format is Python's (it casts) */
    if (!(view = PyMemoryView_FromObject(buf))) goto fail;
    vb = PyMemoryView_GET_BUFFER(view);
    if (vb->ndim != 1 || (vb->format && strcmp(vb->format, "B") != 0) || vb->len != n) {
        r = 0;
        goto pass;
    }
    /* _wants_zerocopy: _tell_policy_plain (the policy's on_sent of copied bytes changes nothing
     * in its zerocopy state), wants_zerocopy and the pinned bytes (checked above), the peer */
    h->plain_sent = 0;
    if ((window = tz_peer_window(h)) < 0 || !(future = tcp_future(h))) goto fail;
    if (window < TZ_MIN_PEER_WINDOW) {
        args[0] = view;
        args[1] = future;
        r = tz_call(self, tz.send_held_now, args, 2);
    } else {
        r = tz_send_held(self, h, view, future, dict);
    }
    if (r < 0) goto fail;
    Py_DECREF(view);
    Py_DECREF(dict);
    return future;
pass:
    Py_XDECREF(view);
    Py_DECREF(dict);
    return r < 0 ? NULL : TCPZC_PASS;
fail:
    Py_XDECREF(future);
    Py_XDECREF(view);
    Py_DECREF(dict);
    return NULL;
}

/* -- the writes a notification finished -------------------------------------------------- */

/* The Completion of the k-th write the last zc_on_range resolved: the last one made if alike
 * (the common case: a route answers the same for every send), or ctracker._completion's. A new
 * reference. */
static PyObject *tz_completion(tcp_hot *h, zc_tracker *t, int64_t i) {
    int64_t key[4] = {t->out_nbytes[i], t->out_zc[i] != 0, t->out_ids[i], t->out_copied[i]};
    PyObject *args[4], *c = NULL;
    int k;
    if (h->zc_last && !memcmp(key, h->zc_last_key, sizeof key)) return Py_NewRef(h->zc_last);
    args[0] = PyLong_FromLongLong(key[0]);
    args[1] = Py_NewRef(key[1] ? Py_True : Py_False);
    args[2] = PyLong_FromLongLong(key[2]);
    args[3] = PyLong_FromLongLong(key[3]);
    if (args[0] && args[2] && args[3]) c = PyObject_Vectorcall(tz.make_completion, args, 4, NULL);
    for (k = 0; k < 4; k++) Py_XDECREF(args[k]);
    if (c) {
        Py_XSETREF(h->zc_last, Py_NewRef(c));
        memcpy(h->zc_last_key, key, sizeof key);
    }
    return c;
}

/* `if not future.done(): future.set_result(completion)`; for the loop's plain futures one call
 * (asyncio.Future.set_result raises InvalidStateError exactly when it is done). 0, or -1. */
static int tz_set_result(tcp_hot *h, PyObject *future, PyObject *completion) {
    int plain = h->set_result && Py_TYPE(future) == (PyTypeObject *)h->fut.future_type, done;
    PyObject *r;
    if (!plain) {
        if (!(r = PyObject_CallMethodNoArgs(future, tz.done))) return -1;
        done = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (done) return done < 0 ? -1 : 0;
    }
    if ((r = tcp_set_result(h, future, completion))) {
        Py_DECREF(r);
        return 0;
    }
    if (!plain || !PyErr_ExceptionMatches(tz.invalid_state)) return -1;
    PyErr_Clear();
    return 0;
}

/* The slot's token if it is a _Held (borrowed), else NULL (with an exception if one was raised). */
static PyObject *tz_token(tcp_hot *h, int64_t slot) {
    PyObject *key = PyLong_FromLongLong(slot), *held;
    if (!key) return NULL;
    held = PyDict_GetItemWithError(h->tokens, key);
    Py_DECREF(key);
    return held && Py_TYPE(held) == tz.held_type ? held : NULL;
}

/* CompiledTracker._results' retiring of a resolved write's open_write handle, if it has one:
 * popped from _handles, its _owner None. 0, or -1 with an exception. */
static int tz_retire(tcp_hot *h, PyObject *key) {
    PyObject *handle;
    int r;
    if (!PyDict_GET_SIZE(h->handles)) return 0;
    if (!(handle = PyDict_GetItemWithError(h->handles, key))) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(handle);
    r = PyDict_DelItem(h->handles, key) < 0 || PyObject_SetAttr(handle, tz.owner, Py_None) < 0 ? -1 : 0;
    Py_DECREF(handle);
    return r;
}

/* base._resolve(tracker._results(n)) for `n` writes whose tokens are _Held. 1 done, 0 for
 * Python (another token), -1 with an exception. */
static int tz_resolve(tcp_hot *h, zc_tracker *t, int64_t n) {
    PyObject *completion, *key, *held, *view, *future, *r;
    int64_t k;
    int failed = 0;
    for (k = 0; k < n; k++)
        if (!tz_token(h, t->out_slot[k])) return PyErr_Occurred() ? -1 : 0;
    for (k = 0; k < n && !failed; k++) {
        if (!(key = PyLong_FromLongLong(t->out_slot[k]))) {
            failed = 1;
            break;
        }
        held = PyDict_GetItemWithError(h->tokens, key); /* (checked above) */
        Py_XINCREF(held);
        failed = !held || PyDict_DelItem(h->tokens, key) < 0 || tz_retire(h, key) < 0;
        Py_DECREF(key);
        if (failed || !(completion = tz_completion(h, t, k))) {
            failed = 1;
            Py_XDECREF(held);
            break;
        }
        if (t->out_zc[k]) {
            h->zc_writes += 1;
            h->zc_write_bytes += t->out_nbytes[k];
        } else {
            h->copy_writes += 1;
        }
        view = *(PyObject **)((char *)held + tz.held_view);
        future = *(PyObject **)((char *)held + tz.held_future);
        r = view ? PyObject_CallMethodNoArgs(view, tz.release) : NULL;
        failed = !r;
        Py_XDECREF(r);
        if (!failed && future && future != Py_None) failed = tz_set_result(h, future, completion) < 0;
        Py_DECREF(completion);
        Py_DECREF(held);
    }
    if (failed) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "aiozc: a held write without its view");
        return -1;
    }
    h->pinned_bytes = t->pinned;
    return 1;
}

/* A u32 from an exact int, or -1 (range_length raises for it: Python's method runs). */
static long long tz_u32(PyObject *o) {
    unsigned long long v;
    if (!PyLong_CheckExact(o)) return -1;
    v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return v > 0xffffffffULL ? -1 : (long long)v;
}

/* transport._resolve_range(lo, hi, copied): the tracker's on_range, then _resolve of the writes
 * it finished (base.py), in C where they share one Completion and are all _Held tokens;
 * else _resolve_closed (base._resolve of tracker._results) does them. */
static PyObject *tcp_resolve_range(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    tcp_hot *h;
    long long lo, hi;
    int64_t n;
    int r;
    PyObject *count;
    if (nargs != 3 || kwnames || !(h = tcp_hot_of(self)) || !h->zc_t || (lo = tz_u32(args[0])) < 0 ||
        (hi = tz_u32(args[1])) < 0 || !PyBool_Check(args[2]))
        return tcp_call_pure(TCP_RESOLVE_RANGE, self, args, nargs, kwnames);
    Py_INCREF(h); /* a future's set_result may schedule what replaces the transport's */
    n = zc_on_range(h->zc_t, (uint32_t)lo, (uint32_t)hi, args[2] == Py_True);
    if (n < 0) {
        Py_DECREF(h);
        return PyErr_NoMemory();
    }
    if (n == 0) {
        h->pinned_bytes = h->zc_t->pinned; /* _resolve([]) */
        r = 1;
    } else {
        r = tz_resolve(h, h->zc_t, n);
    }
    if (r == 0) {
        count = PyLong_FromLongLong(n);
        r = count ? tz_call(self, tz.resolve_closed, &count, 1) : -1;
        Py_XDECREF(count);
    }
    Py_DECREF(h);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* -- the error queue ---------------------------------------------------------------------- */

#define TZ_ERRQUEUE_BATCH 64 /* base._ERRQUEUE_BATCH */
#define TZ_EE_PER_MSG 2 /* extended errors one recvmsg's control buffer can hold */

/* Up to TZ_ERRQUEUE_BATCH messages from the error queue, as kernel.read_errqueue: the extended
 * errors in `out` (their count), 0 with *truncated set on MSG_CTRUNC, -1 with an exception. */
static int tz_read_errqueue(int fd, struct sock_extended_err *out, int *truncated) {
    int i, n = 0;
    *truncated = 0;
    for (i = 0; i < TZ_ERRQUEUE_BATCH; i++) {
        char control[CMSG_SPACE(sizeof(struct sock_extended_err) + 32)]; /* kernel._CMSG_SPACE */
        struct sockaddr_in6 addr;
        struct msghdr msg;
        struct cmsghdr *cm;
        ssize_t r;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &addr;
        msg.msg_namelen = sizeof addr;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        r = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1;
                i--; /* (socket.recvmsg retries, PEP 475) */
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (msg.msg_flags & MSG_CTRUNC) {
            *truncated = 1;
            return 0;
        }
        for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof *out)) continue;
            memcpy(&out[n++], CMSG_DATA(cm), sizeof *out);
        }
    }
    return n;
}

/* Hand one extended error on as base._drain_errqueue does: a zero-copy range to
 * on_zerocopy_range, anything else counted and to _on_socket_error_message (a SocketError
 * whose address is None: the stream transport's handler ignores it). 0, or -1. */
static int tz_dispatch(PyObject *self, tcp_hot *h, const struct sock_extended_err *ee) {
    PyObject *args[6], *message;
    int k, r;
    if (ee->ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee->ee_errno == 0) {
        args[0] = PyLong_FromUnsignedLong(ee->ee_info);
        args[1] = PyLong_FromUnsignedLong(ee->ee_data);
        args[2] = Py_NewRef(ee->ee_code & 1 ? Py_True : Py_False); /* SO_EE_CODE_ZEROCOPY_COPIED */
        r = args[0] && args[1] ? tz_call(self, tz.on_range, args, 3) : -1;
        for (k = 0; k < 3; k++) Py_XDECREF(args[k]);
        return r;
    }
    h->socket_errors += 1;
    args[0] = PyLong_FromUnsignedLong(ee->ee_errno);
    args[1] = PyLong_FromUnsignedLong(ee->ee_origin);
    args[2] = PyLong_FromUnsignedLong(ee->ee_type);
    args[3] = PyLong_FromUnsignedLong(ee->ee_code);
    args[4] = PyLong_FromUnsignedLong(ee->ee_info);
    args[5] = Py_NewRef(Py_None);
    message = args[0] && args[1] && args[2] && args[3] && args[4] ? PyObject_Vectorcall(tz.socket_error, args, 6, NULL) : NULL;
    for (k = 0; k < 6; k++) Py_XDECREF(args[k]);
    if (!message) return -1;
    r = tz_call(self, tz.on_message, &message, 1);
    Py_DECREF(message);
    return r;
}

/* transport._drain_errqueue() (base.py): the queue read here (no socket object, no cffi, no
 * ancillary tuples), each message handed on in order as the Python method does. */
static PyObject *tcp_drain_errqueue(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    struct sock_extended_err ees[TZ_ERRQUEUE_BATCH * TZ_EE_PER_MSG];
    PyObject *dict, *sock, *ok, *exc, *call[2];
    tcp_hot *h;
    int n, k, truncated, r = 0;
    if (nargs || kwnames || !(h = tcp_hot_of(self)) || !h->zc_t)
        return tcp_call_pure(TCP_DRAIN, self, args, nargs, kwnames);
    /* kernel.read_errqueue replaced (tests show the transport other routes so): Python's */
    if (PyDict_GetItemWithError(tz.kernel_dict, tz.read_name) != tz.read_errqueue)
        return PyErr_Occurred() ? NULL : tcp_call_pure(TCP_DRAIN, self, args, nargs, kwnames);
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    sock = PyDict_GetItemWithError(dict, tz.sock);
    ok = sock ? PyDict_GetItemWithError(dict, tz.errqueue_ok) : NULL;
    Py_DECREF(dict);
    if (!ok || !PyBool_Check(ok)) return PyErr_Occurred() ? NULL : tcp_call_pure(TCP_DRAIN, self, args, nargs, kwnames);
    if (sock == Py_None || ok == Py_False) return PyLong_FromLong(0);
    Py_INCREF(h);
    h->zc_since_drain = 0;
    if ((n = tz_read_errqueue(h->fd, ees, &truncated)) < 0) goto fail;
    if (truncated) {
        call[0] = PyLong_FromLong(EMSGSIZE);
        call[1] = PyUnicode_FromString("error-queue control message truncated");
        exc = call[0] && call[1] ? PyObject_Vectorcall(tz.truncated, call, 2, NULL) : NULL;
        Py_XDECREF(call[0]);
        Py_XDECREF(call[1]);
        r = exc ? tz_call(self, tz.fatal, &exc, 1) : -1;
        Py_XDECREF(exc);
        Py_DECREF(h);
        return r < 0 ? NULL : PyLong_FromLong(0);
    }
    h->errqueue_reads += n + (n < TZ_ERRQUEUE_BATCH);
    for (k = 0; k < n && r == 0; k++) r = tz_dispatch(self, h, &ees[k]);
    if (r < 0) goto fail;
    Py_DECREF(h);
    return PyLong_FromLong(n);
fail:
    Py_DECREF(h);
    return NULL;
}

/* Let the TcpHot `hot` send queued zero-copy writes in C: the CompiledTracker `tracker` (its
 * C tracker `t`, its token and handle dicts), the loop's time() `loop_time` (None: asyncio's
 * own, read in C), base._Held, the ZeroCopyPolicy class and ZeroCopyState.ZEROCOPY,
 * ctracker._completion, asyncio.InvalidStateError, kernel.SocketError and kernel.ErrQueueTruncated,
 * the kernel module's dict and its read_errqueue as imported,
 * the policy's threshold, max_pinned_bytes
 * and errqueue_drain_every. 0, or -1 (nothing set: Python's path). */
int zc_tcp_zc_bind(intptr_t hot, intptr_t tracker, intptr_t tokens, intptr_t handles, zc_tracker *t,
                   intptr_t loop_time, intptr_t held_type, intptr_t policy_type, intptr_t zerocopy,
                   intptr_t make_completion, intptr_t invalid_state, intptr_t socket_error, intptr_t truncated,
                   intptr_t kernel_dict, intptr_t read_errqueue, int64_t threshold, int64_t max_pinned,
                   int64_t drain_every) {
    tcp_hot *h = (tcp_hot *)hot;
    enum { NAMES = 24 };
    static const char *names[NAMES] = {"_policy", "state", "_protocol_paused", "_reading", "_eof_received",
                                       "_rx_blocked", "_hup", "_registered_mask", "_zc_continue",
                                       "_send_held_now", "_drain_errqueue", "_after_flush",
                                       "_maybe_pause_protocol", "_update_mask", "_resolve_closed", "release",
                                       "done", "_owner", "_sock", "_errqueue_ok", "on_zerocopy_range",
                                       "_on_socket_error_message", "_fatal_error", "read_errqueue"};
    PyObject **slots[NAMES] = {&tz.policy, &tz.state, &tz.paused, &tz.reading, &tz.eof_received,
                               &tz.rx_blocked, &tz.hup, &tz.registered_mask, &tz.zc_continue,
                               &tz.send_held_now, &tz.drain, &tz.after_flush, &tz.maybe_pause,
                               &tz.update_mask, &tz.resolve_closed, &tz.release, &tz.done, &tz.owner,
                               &tz.sock, &tz.errqueue_ok, &tz.on_range, &tz.on_message, &tz.fatal, &tz.read_name};
    int k;
    if (!tcp_hot_type || Py_TYPE((PyObject *)hot) != tcp_hot_type || !t || !PyDict_CheckExact((PyObject *)tokens) ||
        !PyDict_CheckExact((PyObject *)handles))
        return -1;
    if (!tz.held_type) {
        PyTypeObject *held = (PyTypeObject *)held_type;
        Py_ssize_t fut = member_offset(held, "future"), view = member_offset(held, "view");
        if (fut < 0 || view < 0) return -1;
        for (k = 0; k < NAMES; k++)
            if (tcp_intern(slots[k], names[k]) < 0) {
                PyErr_Clear();
                return -1;
            }
        tz.held_future = fut;
        tz.held_view = view;
        tz.policy_type = (PyTypeObject *)Py_NewRef((PyObject *)policy_type);
        tz.zerocopy = Py_NewRef((PyObject *)zerocopy);
        tz.make_completion = Py_NewRef((PyObject *)make_completion);
        tz.invalid_state = Py_NewRef((PyObject *)invalid_state);
        tz.socket_error = Py_NewRef((PyObject *)socket_error);
        tz.truncated = Py_NewRef((PyObject *)truncated);
        tz.kernel_dict = Py_NewRef((PyObject *)kernel_dict);
        tz.read_errqueue = Py_NewRef((PyObject *)read_errqueue);
        tz.held_type = (PyTypeObject *)Py_NewRef((PyObject *)held); /* last: set up */
    }
    if ((PyObject *)tz.held_type != (PyObject *)held_type || (PyObject *)tz.policy_type != (PyObject *)policy_type ||
        tz.zerocopy != (PyObject *)zerocopy || tz.make_completion != (PyObject *)make_completion ||
        tz.invalid_state != (PyObject *)invalid_state || tz.socket_error != (PyObject *)socket_error ||
        tz.truncated != (PyObject *)truncated)
        return -1;
    Py_XSETREF(h->tracker, Py_NewRef((PyObject *)tracker));
    Py_XSETREF(h->tokens, Py_NewRef((PyObject *)tokens));
    Py_XSETREF(h->handles, Py_NewRef((PyObject *)handles));
    Py_CLEAR(h->loop_time);
    if ((PyObject *)loop_time != Py_None) h->loop_time = Py_NewRef((PyObject *)loop_time);
    h->zc_threshold = threshold;
    h->max_pinned = max_pinned;
    h->drain_every = drain_every;
    h->zc_t = t;
    return 0;
}
