/* The TCP transport's flush of queued segments in C (_flush, and the end of a flush,
 * _after_flush: aiozc/transport.py, streamheld.py are the reference), after the queued copy
 * write (_core_tcpq.c, whose state and helpers it shares: the same translation unit).
 *
 * tcp_flush: _flush() with the head segments plain _Segments sent by copy (our own
 * bytearray, or a held write the policy would copy: no tracker record, below _direct_max):
 * two or more of them in one writev (_send_gathered), one alone as _send_head, in the same
 * order on the same state; any other head through the Python _send_head. `_queued` is
 * brought up to date once per flush and before any Python code runs. Then _after_flush's
 * common case here (tq_after_flush): the protocol's resume_writing called directly,
 * _update_mask only where the mask changes, EPOLLOUT left asked for where _writer_lingers. */

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

/* Whether `seg` (a _Segment) is one _send_head sends by copy without asking the policy, and
 * its bytes left: our own bytearray, or a held write with no tracker record below _direct_max
 * at a valid offset. 1 (iov set), 0 no, -1 with an exception. */
static int tq_copyable(tcp_hot *h, PyObject *seg, struct iovec *iov) {
    PyObject *data = TQ_SLOT(seg, tz.seg_data), *held = TQ_SLOT(seg, tz.seg_held),
             *offset = TQ_SLOT(seg, tz.seg_offset), *write = TQ_SLOT(seg, tz.seg_write);
    Py_ssize_t len, off;
    if (!data || !held || !offset || !write || !TQ_SLOT(seg, tz.seg_future)) return 0;
    if (held == Py_False && PyByteArray_CheckExact(data)) {
        iov->iov_base = PyByteArray_AS_STRING(data);
        iov->iov_len = (size_t)PyByteArray_GET_SIZE(data);
        return 1;
    }
    if (held != Py_True || write != Py_None || Py_TYPE(data) != &PyMemoryView_Type || !PyLong_CheckExact(offset))
        return 0;
    if ((len = PyObject_Length(data)) < 0) return -1;
    if (len >= h->direct_max || ((PyMemoryViewObject *)data)->view.len != len) return 0;
    off = PyLong_AsSsize_t(offset);
    if (off == -1 && PyErr_Occurred()) return -1;
    if (off < 0 || off > len) return 0;
    iov->iov_base = (char *)((PyMemoryViewObject *)data)->view.buf + off;
    iov->iov_len = (size_t)(len - off);
    return 1;
}

/* One segment of a gathered send took `take` of its `left` bytes: what _send_gathered does
 * with it. TQ_NEXT (done, popped), TQ_STOP (it waits on), -1 with an exception. */
static int tq_took(PyObject *self, tcp_hot *h, PyObject *seg, Py_ssize_t take, Py_ssize_t left,
                   Py_ssize_t *pending) {
    PyObject *data = TQ_SLOT(seg, tz.seg_data), *v;
    Py_ssize_t off, len;
    if (TQ_SLOT(seg, tz.seg_held) == Py_False) { /* del data[:take], _queued -= take */
        if (PySequence_DelSlice(data, 0, take) < 0) return -1;
        *pending += take;
        if (take < left) return TQ_STOP;
        return tq_popleft(h->queue) < 0 ? -1 : TQ_NEXT;
    }
    /* _advance_held(seg, take) */
    off = PyLong_AsSsize_t(TQ_SLOT(seg, tz.seg_offset));
    len = PyObject_Length(data);
    if ((off == -1 || len < 0) && PyErr_Occurred()) return -1;
    if (!(v = PyLong_FromSsize_t(off + take))) return -1;
    Py_SETREF(TQ_SLOT(seg, tz.seg_offset), v);
    *pending += take;
    if (take < left) return TQ_STOP;
    if (TQ_SLOT(seg, tz.seg_future) != Py_None && !(h->last_completion && h->last_nbytes == len) &&
        tq_sync(self, pending) < 0)
        return -1;
    return tq_held_done(self, h, seg, len) < 0 ? -1 : TQ_NEXT;
}

/* _send_gathered(): TQ_NEXT (all sent whole), TQ_STOP, TQ_FAILED (the send error went to
 * _fatal_error), TQ_PYTHON (fewer than two such segments: tq_send_head's turn), -1. */
static int tq_send_gathered(PyObject *self, tcp_hot *h, Py_ssize_t size, Py_ssize_t *pending) {
    struct iovec iov[TCP_GATHER_MAX];
    PyObject *segs[TCP_GATHER_MAX], *seg;
    Py_ssize_t sent, take;
    int count = 0, k, r = TQ_PYTHON;
    for (k = 0; k < size && count < TCP_GATHER_MAX; k++) {
        if (!(seg = PySequence_GetItem(h->queue, k))) goto done_err;
        r = Py_TYPE(seg) == tz.segment_type ? tq_copyable(h, seg, &iov[count]) : 0;
        if (r <= 0) {
            Py_DECREF(seg);
            if (r < 0) goto done_err;
            break;
        }
        segs[count++] = seg;
    }
    r = TQ_PYTHON;
    if (count < 2) goto done;
    if ((sent = tcp_send(h->fd, iov, count)) < 0) {
        r = tq_fatal(self, pending);
        goto done;
    }
    r = TQ_STOP;
    if (sent == 0) goto done; /* EAGAIN: Python's BlockingIOError */
    if (tq_count_sent(self, h, sent, pending) < 0) goto done_err;
    for (k = 0; k < count; k++) {
        take = sent < (Py_ssize_t)iov[k].iov_len ? sent : (Py_ssize_t)iov[k].iov_len;
        sent -= take;
        if ((r = tq_took(self, h, segs[k], take, (Py_ssize_t)iov[k].iov_len, pending)) != TQ_NEXT) break;
    }
    goto done;
done_err:
    r = -1;
done:
    for (k = 0; k < count; k++) Py_DECREF(segs[k]);
    return r;
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
 * writer_may_linger (uvloop) read here. 1/0, -1 with an exception. */
static int tq_lingers(PyObject *self, tcp_hot *h, PyObject *dict) {
    PyObject *sock, *mux, *mdict = NULL, *uv, *r;
    long long mask, reg;
    int res = tq_mask(self, dict, 0, &mask);
    (void)h;
    if (res == 0) res = tz_int(dict, tz.registered_mask, &reg);
    if (res < 0) return -1;
    if (res == 0 && reg != (mask | TZ_EPOLLOUT)) return 0;
    sock = res == 0 ? PyDict_GetItemWithError(dict, tz.sock) : NULL;
    if (sock == Py_None) return 0;
    mux = sock ? PyDict_GetItemWithError(dict, tq.mux) : NULL;
    if (mux && !(mdict = PyObject_GenericGetDict(mux, NULL))) return -1;
    if (mdict) {
        uv = PyDict_GetItemWithError(mdict, tq.uvloop);
        res = uv == Py_False ? 0 : uv == Py_True ? 1 : -2;
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
        if (size > 1 && (r = tq_send_gathered(self, h, size, &pending)) != TQ_PYTHON) {
            if (r != TQ_NEXT) break;
            continue;
        }
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
