/* The TCP transport's queued copy write in C: write() with something queued ahead, and the
 * flush of queued segments sent by copy (aiozc/transport.py, streamheld.py are the reference).
 *
 * Against a receiver slower than the sender (bench instructions' "paced" cases) most writes
 * find the queue non-empty and every queued byte leaves through _flush. In Python a queued
 * 64 KiB write() was ~12 frames (_write_queued, _drop_if_lost, _immutable, _zc_possible,
 * byte_view, _enqueue_held, _hold, _Segment, _update_mask, _mask, _maybe_pause_protocol,
 * get_write_buffer_size) and each flushed segment ~7 more (_send_head, _send_copy, the
 * counters' property setters, _advance_held): ~21k user instructions per write on uvloop
 * against uvloop's own ~5.2k (callgrind).
 *
 * tcpq_write: an immutable write (exact bytes, or a memoryview of exact bytes) at or above
 * the threshold while the direct path is open (so neither closing nor closed nor after
 * write_eof: _drop_if_lost and the eof check hold) and the policy not disabled: the view
 * made here and tz_hold's _hold (_core_tcpzc.c); anything else is _write_queued's.
 *
 * tcpq_flush: _flush() with the head segment a plain _Segment sent by copy (our own
 * bytearray, or a held write the policy would copy: no tracker record, below _direct_max)
 * done here, in the same order on the same state; any other head through the Python
 * _send_head, then _after_flush (Python: once per flush, not per segment). */

static struct {
    PyObject *zc_in_flight, *queued, *send_head, *after_flush, *popleft, *release, *done, *policy, *state,
        *head_wanted, *low_water, *resume_writing, *maybe_resume, *eof, *closing, *shutdown_write, *start_close,
        *writer_lingers, *mux, *uvloop, *on_loop;
    PyObject *disabled; /* ZeroCopyState.DISABLED, or NULL: not known yet */
    PyObject *popleft_descr, *release_descr; /* deque.popleft, memoryview.release */
    PyTypeObject *deque_type;
    int ready;
} tq;

#define TQ_SLOT(seg, off) (*(PyObject **)((char *)(seg) + (off)))

static int tq_init(void) {
    if (tq.ready) return 0;
    if (tcp_intern(&tq.zc_in_flight, "_zc_in_flight") || tcp_intern(&tq.queued, "_queued") ||
        tcp_intern(&tq.send_head, "_send_head") || tcp_intern(&tq.after_flush, "_after_flush") ||
        tcp_intern(&tq.popleft, "popleft") || tcp_intern(&tq.release, "release") || tcp_intern(&tq.done, "done") ||
        tcp_intern(&tq.policy, "_policy") || tcp_intern(&tq.state, "state") ||
        tcp_intern(&tq.head_wanted, "head_wanted") || tcp_intern(&tq.low_water, "_low_water") ||
        tcp_intern(&tq.resume_writing, "resume_writing") || tcp_intern(&tq.maybe_resume, "_maybe_resume_protocol") ||
        tcp_intern(&tq.eof, "_eof") || tcp_intern(&tq.closing, "_closing") ||
        tcp_intern(&tq.shutdown_write, "_shutdown_write") || tcp_intern(&tq.start_close, "_start_close") ||
        tcp_intern(&tq.writer_lingers, "_writer_lingers") || tcp_intern(&tq.mux, "_mux") ||
        tcp_intern(&tq.uvloop, "_uvloop") || tcp_intern(&tq.on_loop, "_on_loop"))
        return -1;
    /* the unbound methods, called without a lookup per segment (~0.2k instructions each) */
    if (!(tq.release_descr = PyObject_GetAttr((PyObject *)&PyMemoryView_Type, tq.release))) return -1;
    tq.ready = 1;
    return 0;
}

/* The queue's popleft(), through deque.popleft once the queue's type is known. */
static int tq_popleft(PyObject *queue) {
    PyObject *r;
    if (!tq.deque_type) {
        PyObject *d = PyObject_GetAttr((PyObject *)Py_TYPE(queue), tq.popleft);
        if (!d) return -1;
        tq.popleft_descr = d;
        tq.deque_type = (PyTypeObject *)Py_NewRef((PyObject *)Py_TYPE(queue));
    }
    r = Py_TYPE(queue) == tq.deque_type ? PyObject_Vectorcall(tq.popleft_descr, &queue, 1, NULL)
                                        : PyObject_CallMethodNoArgs(queue, tq.popleft);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* _immutable(data): an exact bytes, or a memoryview whose object is an exact bytes. */
static int tq_immutable(PyObject *data) {
    if (PyBytes_CheckExact(data)) return 1;
    return Py_TYPE(data) == &PyMemoryView_Type && ((PyMemoryViewObject *)data)->view.obj &&
           PyBytes_CheckExact(((PyMemoryViewObject *)data)->view.obj);
}

/* _zc_possible(): 1 the policy's state is not DISABLED, 0 it is or it is not known here
 * (Python's path), -1 with an exception. */
static int tq_zc_possible(PyObject *self) {
    PyObject *dict, *policy, *pdict, *state;
    int ok = 0;
    if (!tz.policy_type || !tz.zerocopy) return 0;
    if (!tq.disabled) {
        PyObject *d = PyObject_GetAttrString((PyObject *)Py_TYPE(tz.zerocopy), "DISABLED");
        if (!d) return -1;
        tq.disabled = d; /* (kept: a member of the enum, alive as long as the class) */
    }
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return -1;
    policy = PyDict_GetItemWithError(dict, tq.policy);
    if (policy && Py_TYPE(policy) == tz.policy_type) {
        if (!(pdict = PyObject_GenericGetDict(policy, NULL))) {
            Py_DECREF(dict);
            return -1;
        }
        state = PyDict_GetItemWithError(pdict, tq.state);
        ok = state && Py_TYPE(state) == Py_TYPE(tq.disabled) && state != tq.disabled;
        Py_DECREF(pdict);
    }
    Py_DECREF(dict);
    return ok ? 1 : PyErr_Occurred() ? -1 : 0;
}

static int tcpq_queue_rest(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n, Py_ssize_t sent);

/* write(data) with something queued ahead (or due to the policy): TCPZC_PASS for
 * _write_queued's path, else None / NULL with an exception. */
static PyObject *tcpq_write(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n) {
    PyObject *view, *args[2];
    int r;
    if (!h->zc_t || !tz.segment_type || !tz.reading || h->direct_max <= 0 || n < h->zc_threshold ||
        !tq_immutable(data) || tq_init() < 0)
        return PyErr_Occurred() ? NULL : TCPZC_PASS;
    if ((r = tq_zc_possible(self)) <= 0) return r < 0 ? NULL : TCPZC_PASS;
    if (!(view = tz_byte_view(data, n))) return PyErr_Occurred() ? NULL : TCPZC_PASS;
    Py_INCREF(h);
    r = tz_hold(self, h, view, Py_None, n);
    if (r == 0) {
        args[0] = view;
        args[1] = Py_None;
        r = tz_call(self, tz.enqueue_held, args, 2);
    }
    Py_DECREF(view);
    Py_DECREF(h);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* _queue_rest(data, n, sent) of an immutable write the direct path sent part of (`sent` bytes
 * of its `n`): _Segment(view, True) at offset `sent` appended, _queued grown by what is left,
 * then _update_mask and _maybe_pause_protocol, computed as tz_hold does and the Python methods
 * called only where they act (here the mask nearly always changes: EPOLLOUT is asked now).
 * 1 done, 0 not this case (Python's _queue_rest: a copy, or state not known here), -1 with an
 * exception. */
static int tq_hold_rest(PyObject *self, tcp_hot *h, PyObject *view, PyObject *future, Py_ssize_t n,
                        Py_ssize_t sent);

static int tcpq_queue_rest(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n, Py_ssize_t sent) {
    PyObject *view;
    int res;
    if (!h->zc_t || !tz.segment_type || !tz.reading || h->direct_max <= 0 || n < h->zc_threshold ||
        !tq_immutable(data) || tq_init() < 0)
        return PyErr_Occurred() ? -1 : 0;
    if ((res = tq_zc_possible(self)) <= 0) return res;
    if (!(view = tz_byte_view(data, n))) return PyErr_Occurred() ? -1 : 0;
    res = tq_hold_rest(self, h, view, Py_None, n, sent);
    Py_DECREF(view);
    return res;
}

/* _queue_zc_rest(buf, n, sent, future) of a write_zc() the direct path sent part of: as
 * _queue_rest's held case, with its future (a Python frame, _Segment's, _update_mask's,
 * _maybe_pause_protocol's: ~10k user instructions once per pause of a paced write_zc()
 * writer, callgrind). 1 done, 0 Python's (a buffer byte_view casts), -1 with an exception. */
static int tcpq_queue_zc_rest(PyObject *self, tcp_hot *h, PyObject *buf, Py_ssize_t n, Py_ssize_t sent,
                              PyObject *future) {
    PyObject *view;
    int res;
    if (!h->zc_t || !tz.segment_type || !tz.reading || h->direct_max <= 0 || tq_init() < 0)
        return PyErr_Occurred() ? -1 : 0;
    if (!(view = tz_byte_view(buf, n))) return PyErr_Occurred() ? -1 : 0;
    res = tq_hold_rest(self, h, view, future, n, sent);
    Py_DECREF(view);
    return res;
}

/* The rest of a held write (`view` of `n` bytes, `sent` of them gone) queued, as _hold(view,
 * future, sent) does: 1 done, 0 a piece of state is not plain here (the caller's Python
 * method), -1 with an exception. */
static int tq_hold_rest(PyObject *self, tcp_hot *h, PyObject *view, PyObject *future, Py_ssize_t n,
                        Py_ssize_t sent) {
    PyObject *dict, *seg, *v, *r;
    long long queued, high, in_flight, mask;
    int reading, eof, blocked, hup, paused, lost, read, res = 0;
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return -1;
    reading = tz_truth(self, dict, tz.reading);
    eof = tz_truth(self, dict, tz.eof_received);
    blocked = tz_truth(self, dict, tz.rx_blocked);
    hup = tz_truth(self, dict, tz.hup);
    paused = tz_truth(self, dict, tz.paused);
    lost = tz_truth(self, dict, tz.conn_lost);
    res = -1;
    if (reading == -1 || eof == -1 || blocked == -1 || hup == -1 || paused == -1 || lost == -1) goto done;
    res = 0;
    if (reading < 0 || eof < 0 || blocked < 0 || hup < 0 || paused < 0 || lost < 0) goto done;
    if ((res = tz_int(dict, tz.queued, &queued)) || (res = tz_int(dict, tz.high_water, &high)) ||
        (res = tz_int(dict, tz.zc_in_flight, &in_flight)) || (res = tz_int(dict, tz.registered_mask, &mask))) {
        res = res < 0 ? -1 : 0;
        goto done;
    }
    res = -1;
    if (!(seg = tz.segment_type->tp_alloc(tz.segment_type, 0))) goto done;
    TQ_SLOT(seg, tz.seg_data) = Py_NewRef(view);
    TQ_SLOT(seg, tz.seg_offset) = PyLong_FromSsize_t(sent);
    TQ_SLOT(seg, tz.seg_held) = Py_NewRef(Py_True);
    TQ_SLOT(seg, tz.seg_future) = Py_NewRef(future);
    TQ_SLOT(seg, tz.seg_write) = Py_NewRef(Py_None);
    r = TQ_SLOT(seg, tz.seg_offset) ? PyObject_CallMethodOneArg(h->queue, tz.append, seg) : NULL;
    Py_DECREF(seg);
    if (!r) goto done;
    Py_DECREF(r);
    queued += n - sent;
    if (!(v = PyLong_FromLongLong(queued))) goto done;
    r = PyDict_SetItem(dict, tz.queued, v) < 0 ? NULL : Py_None;
    Py_DECREF(v);
    if (!r) goto done;
    /* _mask() with something queued, not closing (direct_max > 0) */
    read = reading && !eof && !blocked;
    if (((read ? TZ_EPOLLIN : 0) | (in_flight ? 0 : TZ_EPOLLOUT) | (hup && !read ? TZ_EPOLLET : 0)) != mask &&
        tz_call(self, tz.update_mask, NULL, 0) < 0)
        goto done;
    /* _maybe_pause_protocol(): get_write_buffer_size() is _queued */
    if (!paused && !lost && queued > high && tz_pause(self, dict) < 0) goto done;
    res = 1;
done:
    Py_DECREF(dict);
    return res;
}

/* self._queued -= sent: 0, 1 not an exact int (cannot happen: Python's _flush would fail the
 * same way, so this raises TypeError as `int -= int` would not), -1 with an exception. */
static int tq_queued_sub(PyObject *self, Py_ssize_t sent) {
    PyObject *dict, *v;
    long long queued;
    int r;
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return -1;
    if ((r = tz_int(dict, tq.queued, &queued)) == 0) {
        r = (v = PyLong_FromLongLong(queued - sent)) ? PyDict_SetItem(dict, tq.queued, v) : -1;
        Py_XDECREF(v);
    } else if (r > 0) {
        PyErr_SetString(PyExc_TypeError, "aiozc: _queued is not an int");
        r = -1;
    }
    Py_DECREF(dict);
    return r;
}

enum { TQ_NEXT, TQ_STOP, TQ_PYTHON, TQ_FAILED }; /* what tq_send_head did */

/* The flush's `_queued -= sent`, added up over its segments and made before any Python code
 * runs (the dict lookup and store were ~0.5k user instructions per segment): 0, or -1. */
static int tq_sync(PyObject *self, Py_ssize_t *pending) {
    Py_ssize_t sent = *pending;
    *pending = 0;
    return sent ? tq_queued_sub(self, sent) : 0;
}

/* tcp_count_sent, with `_queued` brought up to date first where it calls _refresh_direct. */
static int tq_count_sent(PyObject *self, tcp_hot *h, Py_ssize_t sent, Py_ssize_t *pending) {
    if (h->plain_sent + sent >= h->plain_budget && tq_sync(self, pending) < 0) return -1;
    return tcp_count_sent(self, h, sent);
}

/* A send error to _fatal_error (which empties the queue and zeroes `_queued`), as tcp_fatal. */
static int tq_fatal(PyObject *self, Py_ssize_t *pending) {
    PyObject *type, *value, *tb;
    int r;
    PyErr_Fetch(&type, &value, &tb);
    r = tq_sync(self, pending);
    PyErr_Restore(type, value, tb);
    if (r < 0) return -1;
    return tcp_fatal(self) < 0 ? -1 : TQ_FAILED;
}

/* A held head segment sent whole: _advance_held's end for one with no tracker record. */
static int tq_held_done(PyObject *self, tcp_hot *h, PyObject *seg, Py_ssize_t nbytes) {
    PyObject *view = TQ_SLOT(seg, tz.seg_data), *future = TQ_SLOT(seg, tz.seg_future), *r, *c;
    int done;
    Py_INCREF(seg); /* the popleft drops the queue's reference */
    if (tq_popleft(h->queue) < 0) goto fail;
    r = Py_TYPE(view) == &PyMemoryView_Type ? PyObject_Vectorcall(tq.release_descr, &view, 1, NULL)
                                            : PyObject_CallMethodNoArgs(view, tq.release);
    if (!r) goto fail;
    Py_DECREF(r);
    if (future != Py_None && h->set_result && Py_TYPE(future) == (PyTypeObject *)h->fut.future_type &&
        tz.invalid_state) {
        /* one of the loop's plain futures: `if not future.done(): future.set_result(c)` is
         * set_result with its InvalidStateError (a cancelled future) dropped, one call less */
        h->copy_writes += 1;
        if (!(c = tcp_copy_completion(self, h, nbytes))) goto fail;
        r = tcp_set_result(h, future, c);
        Py_DECREF(c);
        if (!r && !PyErr_ExceptionMatches(tz.invalid_state)) goto fail;
        if (r) Py_DECREF(r);
        else PyErr_Clear();
    } else if (future != Py_None) {
        h->copy_writes += 1;
        if (!(r = PyObject_CallMethodNoArgs(future, tq.done))) goto fail;
        done = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (done < 0) goto fail;
        if (!done) {
            if (!(c = tcp_copy_completion(self, h, nbytes))) goto fail;
            r = tcp_set_result(h, future, c);
            Py_DECREF(c);
            if (!r) goto fail;
            Py_DECREF(r);
        }
    }
    Py_DECREF(seg);
    return 0;
fail:
    Py_DECREF(seg);
    return -1;
}

/* _send_head() of a plain head segment sent by copy: TQ_NEXT (sent whole, popped),
 * TQ_STOP (the socket took part of it or none), TQ_PYTHON (not this case: the Python method),
 * TQ_FAILED (the send error went to _fatal_error: _flush returns), -1 with an exception. */
static int tq_send_head(PyObject *self, tcp_hot *h, PyObject *seg, Py_ssize_t *pending) {
    PyObject *data = TQ_SLOT(seg, tz.seg_data), *held = TQ_SLOT(seg, tz.seg_held),
             *offset = TQ_SLOT(seg, tz.seg_offset), *write = TQ_SLOT(seg, tz.seg_write),
             *future = TQ_SLOT(seg, tz.seg_future), *v;
    struct iovec iov;
    Py_ssize_t sent, off, len;
    if (!data || !held || !offset || !write || !future) return TQ_PYTHON;
    if (held == Py_False && PyByteArray_CheckExact(data)) {
        /* our own bytearray: _send_copy(data), del data[:sent], _queued -= sent */
        iov.iov_base = PyByteArray_AS_STRING(data);
        iov.iov_len = (size_t)PyByteArray_GET_SIZE(data);
        if ((sent = tcp_send(h->fd, &iov, 1)) < 0) return tq_fatal(self, pending);
        if (sent && tq_count_sent(self, h, sent, pending) < 0) return -1;
        Py_INCREF(data);
        if (PySequence_DelSlice(data, 0, sent) < 0) {
            Py_DECREF(data);
            return -1;
        }
        *pending += sent;
        len = PyByteArray_GET_SIZE(data);
        Py_DECREF(data);
        if (len) return TQ_STOP;
        return tq_popleft(h->queue) < 0 ? -1 : TQ_NEXT;
    }
    /* a held write with no tracker record that the policy would copy (below _direct_max) */
    if (held != Py_True || write != Py_None || Py_TYPE(data) != &PyMemoryView_Type || !PyLong_CheckExact(offset))
        return TQ_PYTHON;
    len = PyObject_Length(data);
    if (len < 0) return -1;
    if (len >= h->direct_max || ((PyMemoryViewObject *)data)->view.len != len) return TQ_PYTHON;
    off = PyLong_AsSsize_t(offset);
    if (off == -1 && PyErr_Occurred()) return -1;
    if (off < 0 || off > len) return TQ_PYTHON;
    iov.iov_base = (char *)((PyMemoryViewObject *)data)->view.buf + off;
    iov.iov_len = (size_t)(len - off);
    if ((sent = tcp_send(h->fd, &iov, 1)) < 0) return tq_fatal(self, pending);
    if (sent == 0 && len > off) return TQ_STOP; /* EAGAIN: Python's BlockingIOError */
    Py_INCREF(seg);
    if (sent && tq_count_sent(self, h, sent, pending) < 0) goto fail;
    /* _advance_held(seg, sent) */
    if (!(v = PyLong_FromSsize_t(off + sent))) goto fail;
    Py_SETREF(TQ_SLOT(seg, tz.seg_offset), v);
    *pending += sent;
    if (off + sent < len) {
        Py_DECREF(seg);
        return TQ_STOP;
    }
    /* (a future's completion may be made by the transport's _copy_completion: a size not seen) */
    if ((future != Py_None && !(h->last_completion && h->last_nbytes == len) && tq_sync(self, pending) < 0) ||
        tq_held_done(self, h, seg, len) < 0)
        goto fail;
    Py_DECREF(seg);
    return TQ_NEXT;
fail:
    Py_DECREF(seg);
    return -1;
}

/* The Python _send_head()'s outcome as tq_send_head's. */
static int tq_python_head(PyObject *self) {
    PyObject *r = PyObject_VectorcallMethod(tq.send_head, &self, 1, NULL);
    int t;
    if (!r) {
        if (PyErr_ExceptionMatches(PyExc_BlockingIOError) || PyErr_ExceptionMatches(PyExc_InterruptedError)) {
            PyErr_Clear();
            return TQ_STOP;
        }
        if (PyErr_ExceptionMatches(PyExc_OSError)) return tcp_fatal(self) < 0 ? -1 : TQ_FAILED;
        return -1;
    }
    t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t < 0 ? -1 : t ? TQ_NEXT : TQ_STOP;
}

/* `if self.<name>:` (the instance dict, else the attribute): 1/0, -1 with an exception. */
static int tq_true(PyObject *self, PyObject *dict, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(dict, name);
    int r;
    if (v) return PyObject_IsTrue(v);
    if (PyErr_Occurred() || !(v = PyObject_GetAttr(self, name))) return -1;
    r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* _mask() with `size` segments queued, from the instance dict: 0 with *mask set, 1 a piece
 * of state not a plain bool / int there (the Python method decides), -1 with an exception. */
static int tq_mask(PyObject *self, PyObject *dict, Py_ssize_t size, long long *mask) {
    int reading = tz_truth(self, dict, tz.reading), eof = tz_truth(self, dict, tz.eof_received),
        closing = tz_truth(self, dict, tq.closing), blocked = tz_truth(self, dict, tz.rx_blocked),
        hup = tz_truth(self, dict, tz.hup), read, r;
    long long in_flight;
    if (reading == -1 || eof == -1 || closing == -1 || blocked == -1 || hup == -1) return -1;
    if (reading < 0 || eof < 0 || closing < 0 || blocked < 0 || hup < 0) return 1;
    if ((r = tz_int(dict, tq.zc_in_flight, &in_flight))) return r;
    read = reading && !eof && !closing && !blocked;
    *mask = (read ? TZ_EPOLLIN : 0) | (size && !in_flight ? TZ_EPOLLOUT : 0) |
            (closing || (hup && !read) ? TZ_EPOLLET : 0);
    return 0;
}

/* _writer_lingers() with nothing queued: its mask test and the multiplexer's
 * writer_may_linger (uvloop, the fd in its selector) read here. 1/0, -1 with an exception. */
static int tq_lingers(PyObject *self, tcp_hot *h, PyObject *dict) {
    PyObject *sock, *mux, *mdict = NULL, *uv, *on_loop, *fd, *r;
    long long mask, reg;
    int res = tq_mask(self, dict, 0, &mask);
    if (res == 0) res = tz_int(dict, tz.registered_mask, &reg);
    if (res < 0) return -1;
    if (res == 0 && reg != (mask | TZ_EPOLLOUT)) return 0;
    sock = res == 0 ? PyDict_GetItemWithError(dict, tz.sock) : NULL;
    if (sock == Py_None) return 0;
    mux = sock ? PyDict_GetItemWithError(dict, tq.mux) : NULL;
    if (mux && !(mdict = PyObject_GenericGetDict(mux, NULL))) return -1;
    if (mdict) {
        uv = PyDict_GetItemWithError(mdict, tq.uvloop);
        on_loop = uv == Py_True ? PyDict_GetItemWithError(mdict, tq.on_loop) : NULL;
        res = uv == Py_False ? 0 : on_loop && PyDict_CheckExact(on_loop) ? 1 : -2;
        if (res == 1) {
            res = (fd = PyLong_FromLong(h->fd)) ? PyDict_Contains(on_loop, fd) : -1;
            Py_XDECREF(fd);
        }
        Py_DECREF(mdict);
        if (res != -2) return res;
    }
    if (PyErr_Occurred()) return -1;
    if (!(r = PyObject_VectorcallMethod(tq.writer_lingers, &self, 1, NULL))) return -1;
    res = PyObject_IsTrue(r);
    Py_DECREF(r);
    return res;
}

/* _after_flush(drained) from the instance dict, the Python methods called where they act:
 * _maybe_resume_protocol's test made here and resume_writing called directly; _update_mask
 * only where the mask changes; _shutdown_write, _start_close, anything not a plain bool or
 * int there, as Python. Its ~8 Python frames per flush were ~10k user instructions against a
 * paced receiver (one flush per ~16 writes of 64 KiB, callgrind). 0, or -1. */
static int tq_python_after_flush(PyObject *self, int drained) {
    PyObject *v = PyBool_FromLong(drained);
    int r = tcp_call_void(self, tq.after_flush, &v, 1);
    Py_DECREF(v);
    return r;
}

static int tq_after_flush(PyObject *self, tcp_hot *h, int drained) {
    PyObject *dict, *v;
    long long queued, low, mask, reg;
    int paused, lost, t, res = -1;
    Py_ssize_t size;
    /* (the names below are interned once a transport bound its core) */
    if (!tz.held_type) return tq_python_after_flush(self, drained);
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return -1;
    v = PyDict_GetItemWithError(dict, tz.sock);
    if (v == Py_None || !v) {
        res = v ? 0 : PyErr_Occurred() ? -1 : tq_python_after_flush(self, drained);
        goto done;
    }
    /* resume_writing() before connection_lost(), as asyncio's transports order them */
    if ((paused = tq_true(self, dict, tz.paused)) < 0) goto done;
    if (paused) {
        lost = tz_truth(self, dict, tz.conn_lost);
        if (lost == -1) goto done;
        t = lost == 0 && PyDict_GetItemWithError(dict, tz.paused) == Py_True ? tz_int(dict, tz.queued, &queued) : 1;
        if (t == 0) t = tz_int(dict, tq.low_water, &low);
        if (t < 0) goto done;
        /* an instance's own _maybe_resume_protocol or _call_protocol (tests set one): the method */
        if (t == 0 && (PyDict_GetItemWithError(dict, tq.maybe_resume) || PyDict_GetItemWithError(dict, tz.call_protocol)))
            t = 1;
        if (PyErr_Occurred()) goto done;
        if (t == 0 && queued <= low) {
            if (PyDict_SetItem(dict, tz.paused, Py_False) < 0 || tz_call_protocol(self, dict, tq.resume_writing) < 0)
                goto done;
        } else if (t > 0 && lost != 1 && tz_call(self, tq.maybe_resume, NULL, 0) < 0) {
            goto done;
        }
    }
    if ((size = PyObject_Size(h->queue)) < 0) goto done;
    if (!size) {
        if ((t = tq_true(self, dict, tq.eof)) < 0 || (t && tz_call(self, tq.shutdown_write, NULL, 0) < 0)) goto done;
        if ((t = tq_true(self, dict, tq.closing)) < 0) goto done;
        if (t) {
            res = tz_call(self, tq.start_close, NULL, 0);
            goto done;
        }
        if (drained && (t = tq_lingers(self, h, dict)) != 0) {
            res = t < 0 ? -1 : 0;
            goto done;
        }
    }
    /* _update_mask(): the Python method only where the mask changes (or is not known here) */
    t = tq_mask(self, dict, size, &mask);
    if (t == 0) t = tz_int(dict, tz.registered_mask, &reg);
    if (t < 0) goto done;
    res = t == 0 && mask == reg ? 0 : tz_call(self, tz.update_mask, NULL, 0);
done:
    Py_DECREF(dict);
    return res;
}

/* transport._flush(head_wanted=False) */
static PyObject *tcp_flush(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *dict, *seg, *type, *value, *tb;
    tcp_hot *h;
    long long in_flight;
    Py_ssize_t size, pending = 0;
    int r, drained = -1;
    if (nargs || kwnames || !(h = tcp_hot_of(self)) || !h->queue || !tz.segment_type || tq_init() < 0) {
        if (PyErr_Occurred()) return NULL;
        return tcp_call_pure(TCP_FLUSH, self, args, nargs, kwnames);
    }
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    r = tz_int(dict, tq.zc_in_flight, &in_flight);
    Py_DECREF(dict);
    if (r < 0) return NULL;
    if (r > 0) return tcp_call_pure(TCP_FLUSH, self, args, nargs, kwnames);
    if (in_flight) Py_RETURN_NONE; /* the head segment is being sent; _after_zc_result resumes */
    Py_INCREF(h); /* a callback below may replace the transport's */
    for (;;) {
        if ((size = PyObject_Size(h->queue)) <= 0) {
            r = size < 0 ? -1 : TQ_STOP;
            break;
        }
        if (drained < 0) drained = 1;
        if (!(seg = PySequence_GetItem(h->queue, 0))) {
            r = -1;
            break;
        }
        r = Py_TYPE(seg) == tz.segment_type ? tq_send_head(self, h, seg, &pending) : TQ_PYTHON;
        Py_DECREF(seg);
        if (r == TQ_PYTHON) r = tq_sync(self, &pending) < 0 ? -1 : tq_python_head(self);
        if (r != TQ_NEXT) break;
    }
    if (pending) { /* (TQ_FAILED synced before _fatal_error); an exception under way kept */
        PyErr_Fetch(&type, &value, &tb);
        if (tq_sync(self, &pending) < 0) {
            r = -1;
            if (type) PyErr_Clear();
        }
        if (type) PyErr_Restore(type, value, tb);
    }
    if (r >= 0 && r != TQ_FAILED) r = tq_after_flush(self, h, drained > 0);
    Py_DECREF(h);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}
