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
 * _after_flush and _maybe_pause_protocol, as Python); a write it does not send (something
 * queued ahead, the policy copying, below the threshold) goes to _enqueue_held with its view
 * and future made here (tz_enqueue); a closed transport or an unusual buffer to the Python
 * method whole (TCPZC_PASS).
 *
 * What comes back, the error queue's notifications and the writes they finish, is in
 * _core_tcpdone.c. */

#include <netinet/tcp.h>

#define TZ_MIN_PEER_WINDOW (32 * 1024) /* streamsend._MIN_PEER_WINDOW */
#define TZ_PEER_WINDOW_SPAN 1.0 /* streamsend._PEER_WINDOW_SPAN */
#define TZ_PEER_WINDOW_MAX_AGE 0.01 /* streamsend._PEER_WINDOW_MAX_AGE */
#define TZ_TCPI_SND_WND 228 /* streamsend._TCPI_SND_WND: tcpi_snd_wnd's offset in struct tcp_info */
#define TZ_EPOLLIN 1LL
#define TZ_EPOLLOUT 4LL
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
        *release, *done, *owner, *sock, *errqueue_ok, *on_range, *on_message, *fatal, *read_name,
        *enqueue_held, *append, *queued, *conn_lost, *high_water, *zc_in_flight, *protocol, *pause_writing,
        *protocol_failed, *call_protocol;
    PyTypeObject *segment_type; /* streamheld._Segment (zc_tcp_zc_segment), or NULL: Python's _hold */
    Py_ssize_t seg_data, seg_offset, seg_held, seg_future, seg_write; /* its slots' offsets */
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

/* byte_view(buf) for a 1-D unsigned-byte buffer of n bytes (a new reference); NULL and no
 * exception for another shape or format (Python's path casts it), NULL with one on an error. */
static PyObject *tz_byte_view(PyObject *buf, Py_ssize_t n) {
    PyObject *view = PyMemoryView_FromObject(buf);
    Py_buffer *vb;
    if (!view) return NULL;
    vb = PyMemoryView_GET_BUFFER(view);
    if (vb->ndim == 1 && (!vb->format || strcmp(vb->format, "B") == 0) && vb->len == n) return view;
    Py_DECREF(view);
    return NULL;
}

/* _write_zc_queued(buf) for a write the compiled path does not send itself (something queued
 * ahead, the policy copying, a small write, the pinned-bytes bound): its checks hold here
 * (direct_max > 0 only while _open_for_direct(), so neither closing nor closed nor after
 * write_eof(); n > 0), so straight to _enqueue_held(view, future) with the view and the future
 * made in C. The Python method's frame, _check_writable's, byte_view's and, on asyncio, the
 * future's Python get_debug() cost ~1.5k user instructions per queued write (callgrind), and a
 * loaded loopback socket queues 10-40% of 64 KiB writes. TCPZC_PASS for Python's path. */
/* An int attribute of the instance dict: 0 with *out set, 1 not there or not an exact int, -1
 * with an exception. */
static int tz_int(PyObject *dict, PyObject *name, long long *out) {
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (!v) return PyErr_Occurred() ? -1 : 1;
    if (!PyLong_CheckExact(v)) return 1;
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* queue.append(item), through deque.append once the queue's type is known (no method lookup
 * per write). 0, or -1 with an exception. */
static int tz_append(PyObject *queue, PyObject *item) {
    static PyObject *append;
    static PyTypeObject *deque;
    PyObject *args[2] = {queue, item}, *r;
    if (!deque) {
        if (!(append = PyObject_GetAttr((PyObject *)Py_TYPE(queue), tz.append))) return -1;
        deque = (PyTypeObject *)Py_NewRef((PyObject *)Py_TYPE(queue));
    }
    r = Py_TYPE(queue) == deque ? PyObject_Vectorcall(append, args, 2, NULL)
                                : PyObject_CallMethodOneArg(queue, tz.append, item);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* protocol.<name>() as ZeroCopyTransportBase._call_protocol makes it: SystemExit and
 * KeyboardInterrupt raised, any other exception to _protocol_failed(name, exc). Its two
 * Python frames and _maybe_pause_protocol's / _maybe_resume_protocol's and
 * get_write_buffer_size's are ~3k user instructions per pause or resume. 0, or -1. */
static int tz_call_protocol(PyObject *self, PyObject *dict, PyObject *name) {
    PyObject *protocol = PyDict_GetItemWithError(dict, tz.protocol), *r, *type, *exc, *tb, *args[2];
    int res;
    if (!protocol) return PyErr_Occurred() ? -1 : tz_call(self, tz.call_protocol, &name, 1);
    Py_INCREF(protocol);
    r = PyObject_CallMethodNoArgs(protocol, name);
    Py_DECREF(protocol);
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) return -1;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb && exc) PyException_SetTraceback(exc, tb);
    args[0] = name;
    args[1] = exc ? exc : Py_None;
    res = tz_call(self, tz.protocol_failed, args, 2);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    return res;
}

/* _maybe_pause_protocol() where it acts (the caller saw the protocol not paused, the
 * connection not lost and get_write_buffer_size(), that is _queued, above _high_water). */
static int tz_pause(PyObject *self, PyObject *dict) {
    /* an instance's own _maybe_pause_protocol or _call_protocol (tests set one): the method */
    if (PyDict_GetItemWithError(dict, tz.maybe_pause) || PyDict_GetItemWithError(dict, tz.call_protocol))
        return tz_call(self, tz.maybe_pause, NULL, 0);
    if (PyErr_Occurred() || PyDict_SetItem(dict, tz.paused, Py_True) < 0) return -1;
    return tz_call_protocol(self, dict, tz.pause_writing);
}

/* _hold(view, future, sent): _Segment(view, True, future) at offset `sent` (of the write's `n`
 * bytes) appended, _queued grown by what is left, then _update_mask and
 * _maybe_pause_protocol, both computed here and the Python methods called only where they
 * would act (a mask to change, a pause due). Its ~7 Python frames were ~9k of the ~12k user
 * instructions of such a write. 1 done, 0 a piece of state is not plain here (the caller's
 * Python method), -1 with an exception. */
static int tz_hold_at(PyObject *self, tcp_hot *h, PyObject *view, PyObject *future, Py_ssize_t n,
                      Py_ssize_t sent) {
    PyObject *dict, *seg, *v;
    long long queued, high, in_flight, mask;
    int reading, eof, blocked, hup, paused, lost, read, known = 0, python = 0, res = 0;
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return -1;
    /* A burst of writes behind a full socket: nothing changed the instance dict (nor the class,
     * whose _rx_blocked is a default) since the last of them left it, whose mask was right
     * and which paused nothing: its state holds, only _queued moved, by what it stored. The
     * ten lookups were ~1.2k user instructions per queued write (callgrind). */
#if RECV_DICT_VERSION
    known = h->hold_dict == dict && recv_dict_version(dict) == h->hold_version &&
            Py_TYPE(self)->tp_version_tag && Py_TYPE(self)->tp_version_tag == h->hold_type_version;
#endif
    h->hold_dict = NULL;
    if (known) {
        queued = h->hold_queued;
        high = h->hold_high;
        paused = h->hold_quiet;
        lost = 0;
    } else {
        reading = tz_truth(self, dict, tz.reading);
        eof = tz_truth(self, dict, tz.eof_received);
        blocked = tz_truth(self, dict, tz.rx_blocked);
        hup = tz_truth(self, dict, tz.hup);
        paused = tz_truth(self, dict, tz.paused);
        lost = tz_truth(self, dict, tz.conn_lost);
        if (reading == -1 || eof == -1 || blocked == -1 || hup == -1 || paused == -1 || lost == -1) goto fail;
        if (reading < 0 || eof < 0 || blocked < 0 || hup < 0 || paused < 0 || lost < 0) goto done;
        if ((res = tz_int(dict, tz.queued, &queued)) || (res = tz_int(dict, tz.high_water, &high)) ||
            (res = tz_int(dict, tz.zc_in_flight, &in_flight)) || (res = tz_int(dict, tz.registered_mask, &mask))) {
            res = res < 0 ? -1 : 0;
            goto done;
        }
        /* _mask() with something queued, not closing (direct_max > 0) */
        read = reading && !eof && !blocked;
        python = ((read ? TZ_EPOLLIN : 0) | (in_flight ? 0 : TZ_EPOLLOUT) | (hup && !read ? TZ_EPOLLET : 0)) != mask;
    }
    if (!(seg = tz.segment_type->tp_alloc(tz.segment_type, 0))) goto fail;
    *(PyObject **)((char *)seg + tz.seg_data) = Py_NewRef(view);
    *(PyObject **)((char *)seg + tz.seg_offset) = PyLong_FromSsize_t(sent);
    *(PyObject **)((char *)seg + tz.seg_held) = Py_NewRef(Py_True);
    *(PyObject **)((char *)seg + tz.seg_future) = Py_NewRef(future);
    *(PyObject **)((char *)seg + tz.seg_write) = Py_NewRef(Py_None);
    res = *(PyObject **)((char *)seg + tz.seg_offset) ? tz_append(h->queue, seg) : -1;
    Py_DECREF(seg);
    if (res < 0) goto fail;
    queued += n - sent;
    if (!(v = PyLong_FromLongLong(queued)) || PyDict_SetItem(dict, tz.queued, v) < 0) {
        Py_XDECREF(v);
        goto fail;
    }
    Py_DECREF(v);
    if (python && tz_call(self, tz.update_mask, NULL, 0) < 0) goto fail;
    /* _maybe_pause_protocol(): get_write_buffer_size() is _queued */
    if (!paused && !lost && queued > high) {
        python = 1;
        if (tz_pause(self, dict) < 0) goto fail;
    }
    if (!python) {
        h->hold_dict = dict;
        h->hold_version = recv_dict_version(dict);
        h->hold_type_version = Py_TYPE(self)->tp_version_tag;
        h->hold_queued = queued;
        h->hold_high = high;
        h->hold_quiet = paused || lost;
    }
    res = 1;
done:
    Py_DECREF(dict);
    return res;
fail:
    Py_DECREF(dict);
    return -1;
}

/* _enqueue_held(view, future) with something queued ahead: _hold(view, future, 0). 1 done, 0
 * not this case (Python's _enqueue_held), -1 with an exception. */
static int tz_hold(PyObject *self, tcp_hot *h, PyObject *view, PyObject *future, Py_ssize_t n) {
    Py_ssize_t size;
    if (!tz.segment_type) return 0;
    if ((size = PyObject_Size(h->queue)) <= 0) return size < 0 ? -1 : 0;
    return tz_hold_at(self, h, view, future, n, 0);
}

static PyObject *tz_enqueue(PyObject *self, tcp_hot *h, PyObject *buf, Py_ssize_t n) {
    PyObject *view, *future, *args[2];
    int r;
    if (!h->fut.loop && !h->make_future) return TCPZC_PASS;
    if (!(view = tz_byte_view(buf, n))) return PyErr_Occurred() ? NULL : TCPZC_PASS;
    if (!(future = tcp_future(h))) {
        Py_DECREF(view);
        return NULL;
    }
    args[0] = view;
    args[1] = future;
    r = tz_hold(self, h, view, future, n);
    if (r == 0) r = tz_call(self, tz.enqueue_held, args, 2);
    Py_DECREF(view);
    if (r < 0) Py_CLEAR(future);
    return future;
}

static PyObject *tcpzc_write(PyObject *self, tcp_hot *h, PyObject *buf, const char *p, Py_ssize_t n) {
    PyObject *dict, *view = NULL, *future = NULL, *args[2];
    Py_buffer *vb;
    Py_ssize_t queued;
    long long window;
    int r;
    (void)p;
    if (h->direct_max <= 0) return TCPZC_PASS;
    if (n < h->zc_threshold || h->errqueue_quiet || h->zc_t->pinned >= h->max_pinned)
        return tz_enqueue(self, h, buf, n);
    if ((queued = PyObject_Size(h->queue)) != 0) return queued < 0 ? NULL : tz_enqueue(self, h, buf, n);
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    if ((r = tz_state_ok(dict)) <= 0) {
        Py_DECREF(dict);
        return r < 0 ? NULL : tz_enqueue(self, h, buf, n);
    }
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
    enum { NAMES = 34 };
    static const char *names[NAMES] = {"_policy", "state", "_protocol_paused", "_reading", "_eof_received",
                                       "_rx_blocked", "_hup", "_registered_mask", "_zc_continue",
                                       "_send_held_now", "_drain_errqueue", "_after_flush",
                                       "_maybe_pause_protocol", "_update_mask", "_resolve_closed", "release",
                                       "done", "_owner", "_sock", "_errqueue_ok", "on_zerocopy_range",
                                       "_on_socket_error_message", "_fatal_error", "read_errqueue",
                                       "_enqueue_held", "_queued", "_conn_lost", "_high_water",
                                       "_zc_in_flight", "append", "_protocol", "pause_writing",
                                       "_protocol_failed", "_call_protocol"};
    PyObject **slots[NAMES] = {&tz.policy, &tz.state, &tz.paused, &tz.reading, &tz.eof_received,
                               &tz.rx_blocked, &tz.hup, &tz.registered_mask, &tz.zc_continue,
                               &tz.send_held_now, &tz.drain, &tz.after_flush, &tz.maybe_pause,
                               &tz.update_mask, &tz.resolve_closed, &tz.release, &tz.done, &tz.owner,
                               &tz.sock, &tz.errqueue_ok, &tz.on_range, &tz.on_message, &tz.fatal, &tz.read_name,
                               &tz.enqueue_held, &tz.queued, &tz.conn_lost, &tz.high_water,
                               &tz.zc_in_flight, &tz.append, &tz.protocol, &tz.pause_writing,
                               &tz.protocol_failed, &tz.call_protocol};
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

/* streamheld._Segment, for tz_hold (once per process). 0, or -1 (Python's _hold). */
int zc_tcp_zc_segment(intptr_t segment_type) {
    PyTypeObject *type = (PyTypeObject *)segment_type;
    Py_ssize_t data = member_offset(type, "data"), offset = member_offset(type, "offset"),
               held = member_offset(type, "held"), future = member_offset(type, "future"),
               write = member_offset(type, "write");
    if (tz.segment_type) return (PyObject *)tz.segment_type == (PyObject *)type ? 0 : -1;
    if (data < 0 || offset < 0 || held < 0 || future < 0 || write < 0) return -1;
    tz.seg_data = data;
    tz.seg_offset = offset;
    tz.seg_held = held;
    tz.seg_future = future;
    tz.seg_write = write;
    tz.segment_type = (PyTypeObject *)Py_NewRef((PyObject *)type);
    return 0;
}
