/* The TCP transport's queued copy write in C: write() with something queued ahead
 * (aiozc/transport.py, streamheld.py are the reference).
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
 * tcpq_queue_rest / tcpq_queue_zc_rest: what the socket did not take of a direct write()
 * of immutable bytes / a direct write_zc() queued as _queue_rest / _queue_zc_rest do.
 *
 * The flush of what is queued is the next source, _core_tcpflush.c. */

static struct {
    PyObject *zc_in_flight, *queued, *send_head, *after_flush, *popleft, *release, *done, *policy, *state,
        *head_wanted, *low_water, *resume_writing, *maybe_resume, *eof, *closing, *shutdown_write, *start_close,
        *writer_lingers, *mux, *uvloop;
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
        tcp_intern(&tq.uvloop, "_uvloop"))
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
    if (!tcp_zc_tracker(self, h) || !tz.segment_type || !tz.reading || h->direct_max <= 0 || n < h->zc_threshold ||
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
 * then _update_mask and _maybe_pause_protocol, computed by tz_hold_at and the Python methods
 * called only where they act (here the mask nearly always changes: EPOLLOUT is asked now).
 * 1 done, 0 not this case (Python's _queue_rest: a copy, or state not known here), -1 with an
 * exception. */
static int tcpq_queue_rest(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n, Py_ssize_t sent) {
    PyObject *view;
    int res;
    if (!tcp_zc_tracker(self, h) || !tz.segment_type || !tz.reading || h->direct_max <= 0 || n < h->zc_threshold ||
        !tq_immutable(data) || tq_init() < 0)
        return PyErr_Occurred() ? -1 : 0;
    if ((res = tq_zc_possible(self)) <= 0) return res;
    if (!(view = tz_byte_view(data, n))) return PyErr_Occurred() ? -1 : 0;
    res = tz_hold_at(self, h, view, Py_None, n, sent);
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
    if (!tcp_zc_tracker(self, h) || !tz.segment_type || !tz.reading || h->direct_max <= 0 || tq_init() < 0)
        return PyErr_Occurred() ? -1 : 0;
    if (!(view = tz_byte_view(buf, n))) return PyErr_Occurred() ? -1 : 0;
    res = tz_hold_at(self, h, view, future, n, sent);
    Py_DECREF(view);
    return res;
}
