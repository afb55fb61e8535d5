/* What comes back to the TCP transport's zero-copy writes, in C: the error-queue drain
 * (transport._drain_errqueue) and the resolution of the writes a notification finished
 * (transport._resolve_range); base.py's methods are the reference, and the Python methods
 * run wherever these cannot stand for them. The per-range policy and stats stay in Python
 * (on_zerocopy_range): a drain hands it every range in order, as base._drain_errqueue does.
 * State and interned names are _core_tcpzc.c's (`tz`, bound by zc_tcp_zc_bind). */

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

/* tz_read_errqueue's handler (zc_errqueue_batch): every extended error kept, in order. */
typedef struct {
    struct sock_extended_err *out;
    int n;
} tz_ees;

static int tz_keep(void *ctx, struct sock_extended_err ee, const struct msghdr *msg) {
    tz_ees *c = ctx;
    (void)msg;
    c->out[c->n++] = ee;
    return 0;
}

/* Up to TZ_ERRQUEUE_BATCH messages from the error queue, as kernel.read_errqueue: the extended
 * errors in `out` (their count), 0 with *truncated set on MSG_CTRUNC, -1 with an exception. */
static int tz_read_errqueue(int fd, struct sock_extended_err *out, int *truncated) {
    tz_ees c = {out, 0};
    /* an interrupted recvmsg is retried after PyErr_CheckSignals, as socket.recvmsg (PEP 475) */
    int r = zc_errqueue_batch(fd, TZ_ERRQUEUE_BATCH, tz_keep, &c, PyErr_CheckSignals, NULL);
    *truncated = r == ZC_EQ_TRUNCATED;
    if (*truncated) return 0;
    if (r == ZC_EQ_RAISED) return -1;
    if (r < 0) {
        errno = -r;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return c.n;
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
