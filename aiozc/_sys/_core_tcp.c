/* The TCP transport's write(), write_zc() and writelines() on the direct path, as C methods
 * of the transport class (aiozc/transport.py, aiozc/streamsend.py).
 *
 * The direct path is one write(2) / writev(2) of what the policy would copy anyway, with
 * nothing queued ahead of it. In Python that was a method frame, six instance attribute reads
 * on a transport whose instance dict is too large for CPython 3.11's specialized attribute
 * access, os.write's argument clinic and four counter updates: ~3k user instructions for a
 * 1-byte write on uvloop against uvloop's own ~0.45k (callgrind). These methods do the same
 * steps in the same order on the same state, which lives in a TcpHot object in the
 * transport's `_hot` slot: the fd, _direct_max, _plain_sent, _plain_budget, the queue (the
 * transport's deque) and the copy_sends / copy_bytes / copy_writes counters of its stats
 * (transport.py's properties read and write them there; an attribute in the instance dict
 * or a counter in the stats' dict costs a dict lookup and a store, ~0.5k instructions per
 * update on CPython 3.11, measured).
 *
 * Anything else goes to the Python methods the class had (the reference, and the only path
 * with AIOZC_NO_EXTENSIONS=1): another call form, a buffer that is not an exact bytes /
 * bytearray / live C-contiguous memoryview, an empty one, a write the policy might send
 * zero-copy, a queue that is not empty, a transport without its TcpHot. What
 * the socket did not take and a send error go to the same Python helpers the Python methods
 * call at that point (_queue_rest, _queue_zc_rest, _writelines_from, _fatal_error), so what
 * follows the send is the Python code itself.
 *
 * The system calls keep the GIL (non-blocking sockets, as the rest of the core). */

#include <structmember.h>
#include <sys/uio.h>
#include <unistd.h>

#define TCP_GATHER_MAX 64 /* streamsend._GATHER_MAX */

enum { TCP_WRITE, TCP_WRITE_ZC, TCP_WRITELINES, TCP_IS_CLOSING, TCP_RESOLVE_RANGE, TCP_DRAIN, TCP_FLUSH, TCP_NMETHODS };

typedef struct {
    PyObject_HEAD
    int fd;
    long long direct_max, plain_sent, plain_budget;
    long long copy_sends, copy_bytes, copy_writes;
    PyObject *queue;           /* the transport's deque */
    PyObject *make_future;     /* transport._make_future */
    PyObject *completions;     /* transport._copy_completions */
    zc_futures fut;            /* the loop's plain futures, made in C (_core_pyhot.c), else unset */
    PyObject *set_result;      /* Future.set_result (the descriptor) with `fut`, else NULL */
    PyObject *last_completion; /* the Completion of the last copied write_zc(), of last_nbytes */
    Py_ssize_t last_nbytes;
    zc_done_keep done;         /* futures of the last write_zc() calls sent whole (zc_futures_done) */
    /* The queued zero-copy write_zc() (_core_tcpzc.c): its stats counters, the peer-window
     * state of streamsend._peer_window and _errqueue_quiet, shared with Python as the above. */
    long long zc_sends, zc_bytes, pinned_bytes, peak_pinned_bytes, zc_since_drain, zc_writes, zc_write_bytes,
        errqueue_reads, socket_errors;
    double peer_window_at, peer_window_peak_at;
    long long peer_window_peak;
    char errqueue_quiet;
    /* set by zc_tcp_zc_bind (else zc_t NULL: Python's queued path) */
    zc_tracker *zc_t;
    PyObject *tracker, *tokens, *handles; /* the CompiledTracker (owns zc_t), its _tokens and _handles */
    char zc_asked; /* tcp_zc_tracker asked the transport for its (lazy) tracker once */
    PyObject *loop_time; /* loop.time, or NULL: asyncio's own (time.monotonic(), read here) */
    PyObject *zc_last; /* the Completion _resolve_range made last, of zc_last_key */
    int64_t zc_last_key[4];
    long long zc_threshold, max_pinned, drain_every;
    /* tz_hold's state as it left it (see there): the instance dict (only compared), its version
     * and the class's, _queued, _high_water, and whether the protocol is paused or lost */
    PyObject *hold_dict;
    uint64_t hold_version;
    unsigned int hold_type_version;
    long long hold_queued, hold_high;
    int hold_quiet;
} tcp_hot;

/* The queued zero-copy write_zc() (_core_tcpzc.c): a future, or TCPZC_PASS (Python's). */
static char tcpzc_pass;
#define TCPZC_PASS ((PyObject *)&tcpzc_pass)
static PyObject *tcpzc_write(PyObject *self, tcp_hot *h, PyObject *buf, const char *p, Py_ssize_t n);
static PyObject *tcp_resolve_range(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
static PyObject *tcp_drain_errqueue(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
/* The queued copy write and the flush (_core_tcpq.c): TCPZC_PASS for _write_queued. */
static PyObject *tcpq_write(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n);
static int tcpq_queue_rest(PyObject *self, tcp_hot *h, PyObject *data, Py_ssize_t n, Py_ssize_t sent);
static int tcpq_queue_zc_rest(PyObject *self, tcp_hot *h, PyObject *buf, Py_ssize_t n, Py_ssize_t sent,
                              PyObject *future);
static PyObject *tcp_flush(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

static PyTypeObject *tcp_hot_type;
static Py_ssize_t tcp_hot_offset = -1; /* of the transport's `_hot` slot */
static PyObject *tcp_pure[TCP_NMETHODS]; /* the class's Python methods */
static PyObject *tn_refresh_direct, *tn_queue_rest, *tn_write_queued, *tn_fatal_error,
    *tn_copy_completion, *tn_set_result, *tn_failed_future, *tn_queue_zc_rest, *tn_write_zc_queued,
    *tn_writelines_items, *tn_writelines_from, *tn_closing, *tn_tracker;

static PyMemberDef tcp_hot_members[] = {
    {"fd", T_INT, offsetof(tcp_hot, fd), 0, NULL},
    {"direct_max", T_LONGLONG, offsetof(tcp_hot, direct_max), 0, NULL},
    {"plain_sent", T_LONGLONG, offsetof(tcp_hot, plain_sent), 0, NULL},
    {"plain_budget", T_LONGLONG, offsetof(tcp_hot, plain_budget), 0, NULL},
    {"copy_sends", T_LONGLONG, offsetof(tcp_hot, copy_sends), 0, NULL},
    {"copy_bytes", T_LONGLONG, offsetof(tcp_hot, copy_bytes), 0, NULL},
    {"copy_writes", T_LONGLONG, offsetof(tcp_hot, copy_writes), 0, NULL},
    {"queue", T_OBJECT, offsetof(tcp_hot, queue), 0, NULL},
    {"make_future", T_OBJECT, offsetof(tcp_hot, make_future), 0, NULL},
    {"completions", T_OBJECT, offsetof(tcp_hot, completions), 0, NULL},
    {"zc_sends", T_LONGLONG, offsetof(tcp_hot, zc_sends), 0, NULL},
    {"zc_bytes", T_LONGLONG, offsetof(tcp_hot, zc_bytes), 0, NULL},
    {"pinned_bytes", T_LONGLONG, offsetof(tcp_hot, pinned_bytes), 0, NULL},
    {"peak_pinned_bytes", T_LONGLONG, offsetof(tcp_hot, peak_pinned_bytes), 0, NULL},
    {"zc_since_drain", T_LONGLONG, offsetof(tcp_hot, zc_since_drain), 0, NULL},
    {"zc_writes", T_LONGLONG, offsetof(tcp_hot, zc_writes), 0, NULL},
    {"errqueue_reads", T_LONGLONG, offsetof(tcp_hot, errqueue_reads), 0, NULL},
    {"socket_errors", T_LONGLONG, offsetof(tcp_hot, socket_errors), 0, NULL},
    {"zc_write_bytes", T_LONGLONG, offsetof(tcp_hot, zc_write_bytes), 0, NULL},
    {"peer_window_at", T_DOUBLE, offsetof(tcp_hot, peer_window_at), 0, NULL},
    {"peer_window_peak_at", T_DOUBLE, offsetof(tcp_hot, peer_window_peak_at), 0, NULL},
    {"peer_window_peak", T_LONGLONG, offsetof(tcp_hot, peer_window_peak), 0, NULL},
    {"errqueue_quiet", T_BOOL, offsetof(tcp_hot, errqueue_quiet), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int tcp_hot_traverse(PyObject *self, visitproc visit, void *arg) {
    tcp_hot *h = (tcp_hot *)self;
    Py_VISIT(h->queue);
    Py_VISIT(h->make_future);
    Py_VISIT(h->completions);
    Py_VISIT(h->fut.loop);
    Py_VISIT(h->fut.loop_kwargs);
    Py_VISIT(h->fut.debug);
    Py_VISIT(h->set_result);
    Py_VISIT(h->last_completion);
    {
        int v = zc_done_traverse(&h->done, visit, arg);
        if (v) return v;
    }
    Py_VISIT(h->tracker);
    Py_VISIT(h->tokens);
    Py_VISIT(h->handles);
    Py_VISIT(h->loop_time);
    Py_VISIT(h->zc_last);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int tcp_hot_clear(PyObject *self) {
    tcp_hot *h = (tcp_hot *)self;
    Py_CLEAR(h->queue);
    Py_CLEAR(h->make_future);
    Py_CLEAR(h->completions);
    zc_futures_clear(&h->fut);
    Py_CLEAR(h->set_result);
    Py_CLEAR(h->last_completion);
    zc_done_clear(&h->done);
    h->zc_t = NULL;
    Py_CLEAR(h->tracker);
    Py_CLEAR(h->tokens);
    Py_CLEAR(h->handles);
    Py_CLEAR(h->loop_time);
    Py_CLEAR(h->zc_last);
    return 0;
}

static void tcp_hot_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tcp_hot_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot tcp_hot_slots[] = {
    {Py_tp_members, tcp_hot_members},
    {Py_tp_traverse, tcp_hot_traverse},
    {Py_tp_clear, tcp_hot_clear},
    {Py_tp_dealloc, tcp_hot_dealloc},
    {Py_tp_doc, "The TCP transport's direct-path state, shared by its Python and C methods."},
    {0, NULL},
};

static PyType_Spec tcp_hot_spec = {
    "aiozc._core.TcpHot", sizeof(tcp_hot), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tcp_hot_slots,
};

static PyObject *tcp_call_pure(int which, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PyObject *small[8], **stack = small, *r;
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (n + 1 > 8 && !(stack = PyMem_Malloc((size_t)(n + 1) * sizeof *stack))) return PyErr_NoMemory();
    stack[0] = self;
    memcpy(stack + 1, args, (size_t)n * sizeof *args);
    r = PyObject_Vectorcall(tcp_pure[which], stack, (size_t)nargs + 1, kwnames);
    if (stack != small) PyMem_Free(stack);
    return r;
}

/* The transport's TcpHot (borrowed), or NULL: not set up (the Python methods run). */
static tcp_hot *tcp_hot_of(PyObject *self) {
    PyObject *h = *(PyObject **)((char *)self + tcp_hot_offset);
    return h && Py_TYPE(h) == tcp_hot_type ? (tcp_hot *)h : NULL;
}

/* The bytes of an exact bytes / bytearray / live C-contiguous memoryview (what write()'s
 * direct path takes): 1, else 0 (the Python method decides, and raises what it raises). */
static int tcp_simple_buffer(PyObject *o, const char **p, Py_ssize_t *n) {
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyBytes_Type) {
        *p = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return 1;
    }
    if (t == &PyByteArray_Type) {
        *p = PyByteArray_AS_STRING(o);
        *n = PyByteArray_GET_SIZE(o);
        return 1;
    }
    if (t == &PyMemoryView_Type) {
        PyMemoryViewObject *mv = (PyMemoryViewObject *)o;
        if ((mv->flags & _Py_MEMORYVIEW_RELEASED) || (mv->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED)) return 0;
        if (!(mv->flags & (_Py_MEMORYVIEW_C | _Py_MEMORYVIEW_SCALAR))) return 0; /* .c_contiguous */
        *p = mv->view.buf;
        *n = mv->view.len; /* .nbytes */
        return 1;
    }
    return 0;
}

static PyObject *tcp_call_method(PyObject *self, PyObject *name, PyObject *const *args, size_t nargs) {
    PyObject *stack[5];
    size_t k;
    stack[0] = self;
    for (k = 0; k < nargs; k++) stack[k + 1] = args[k];
    return PyObject_VectorcallMethod(name, stack, nargs + 1, NULL);
}

/* Call self.<name>(args) and drop its result: 0, or -1 with an exception. */
static int tcp_call_void(PyObject *self, PyObject *name, PyObject *const *args, size_t nargs) {
    PyObject *r = tcp_call_method(self, name, args, nargs);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* The direct path's gate: nothing queued ahead (the deque is empty) and `nbytes` below
 * _direct_max (0 while closing, after write_eof, before the socket is ours). */
static int tcp_direct(tcp_hot *h, Py_ssize_t nbytes) {
    return nbytes < h->direct_max && h->direct_max > 0 && h->queue && PyObject_Size(h->queue) == 0;
}

/* The send of the direct path: bytes sent (0: the socket is full), or -1 with an OSError set
 * (what os.write / os.writev raise; EINTR retried after the signal handlers, as PEP 475). */
static Py_ssize_t tcp_send(int fd, const struct iovec *iov, int n) {
    for (;;) {
        ssize_t r = n == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len) : writev(fd, iov, n);
        if (r >= 0) return (Py_ssize_t)r;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) return -1;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
}

/* A send error, as the Python methods' `except OSError as exc: self._fatal_error(exc)`. */
static int tcp_fatal(PyObject *self) {
    PyObject *type, *value, *tb;
    int r;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (!value) return -1;
    r = tcp_call_void(self, tn_fatal_error, &value, 1);
    Py_DECREF(value);
    return r;
}

/* The counters of a send that moved `sent` > 0 bytes, in the Python order: stats.copy_sends,
 * stats.copy_bytes, self._plain_sent, then _refresh_direct() once the budget is spent. */
static int tcp_count_sent(PyObject *self, tcp_hot *h, Py_ssize_t sent) {
    h->copy_sends += 1;
    h->copy_bytes += sent;
    h->plain_sent += sent;
    return h->plain_sent >= h->plain_budget ? tcp_call_void(self, tn_refresh_direct, NULL, 0) : 0;
}

/* What the direct path's send left to do (tcp_send_direct). */
enum { TCP_SENT_WHOLE, TCP_SENT_PART, TCP_SENT_FAILED };

/* The direct path's send of write(), write_zc() and writelines(): `iov` (`total` > 0 bytes),
 * then the counters of what it moved, or a send error to _fatal_error. TCP_SENT_WHOLE,
 * TCP_SENT_PART (*sent bytes went, possibly 0: the socket is full; the caller queues the
 * rest), TCP_SENT_FAILED (the error was handed on), or -1 with an exception. The caller holds
 * a reference to `h`: a callback may replace the transport's. */
static int tcp_send_direct(PyObject *self, tcp_hot *h, const struct iovec *iov, int n, Py_ssize_t total,
                           Py_ssize_t *sent) {
    *sent = tcp_send(h->fd, iov, n);
    if (*sent < 0) return tcp_fatal(self) < 0 ? -1 : TCP_SENT_FAILED;
    if (*sent && tcp_count_sent(self, h, *sent) < 0) return -1;
    return *sent == total ? TCP_SENT_WHOLE : TCP_SENT_PART;
}

/* self.<name>(obj, a, b), its result dropped: what the Python methods call with what the
 * socket did not take. 0, or -1 with an exception. */
static int tcp_call_rest(PyObject *self, PyObject *name, PyObject *obj, Py_ssize_t a, Py_ssize_t b) {
    PyObject *call[3] = {obj, PyLong_FromSsize_t(a), PyLong_FromSsize_t(b)};
    int r = call[1] && call[2] ? tcp_call_void(self, name, call, 3) : -1;
    Py_XDECREF(call[1]);
    Py_XDECREF(call[2]);
    return r;
}

/* transport.write(data) */
static PyObject *tcp_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *data;
    tcp_hot *h;
    const char *p;
    Py_ssize_t n, sent;
    struct iovec iov;
    int r;
    if (nargs != 1 || kwnames || !(h = tcp_hot_of(self)) || !tcp_simple_buffer(args[0], &p, &n))
        return tcp_call_pure(TCP_WRITE, self, args, nargs, kwnames);
    data = args[0];
    if (n <= 0 || !tcp_direct(h, n)) {
        PyObject *q;
        if (PyErr_Occurred()) return NULL;
        if (n > 0 && (q = tcpq_write(self, h, data, n)) != TCPZC_PASS) return q;
        return tcp_call_method(self, tn_write_queued, &data, 1);
    }
    Py_INCREF(h); /* a callback below may replace the transport's */
    iov.iov_base = (void *)p;
    iov.iov_len = (size_t)n;
    r = tcp_send_direct(self, h, &iov, 1, n, &sent);
    if (r == TCP_SENT_PART && (r = tcpq_queue_rest(self, h, data, n, sent)) == 0)
        r = tcp_call_rest(self, tn_queue_rest, data, n, sent);
    Py_DECREF(h);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* The Completion of a write of `n` bytes sent whole by copy: _copy_completions.get(n) or
 * _copy_completion(n), as write_zc()'s direct path, the last one kept here (the same size
 * again, the common case: no int to make, no dict lookup, ~0.3k instructions). Completions
 * are immutable, so one kept after _copy_completions dropped it is still the right one.
 * A new reference. */
static PyObject *tcp_copy_completion(PyObject *self, tcp_hot *h, Py_ssize_t n) {
    PyObject *key, *c = NULL;
    if (h->last_completion && h->last_nbytes == n) return Py_NewRef(h->last_completion);
    if (!(key = PyLong_FromSsize_t(n))) return NULL;
    if (h->completions && PyDict_CheckExact(h->completions)) {
        c = PyDict_GetItemWithError(h->completions, key);
        if (c) {
            Py_INCREF(c);
        } else if (PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
    }
    if (!c) c = tcp_call_method(self, tn_copy_completion, &key, 1);
    Py_DECREF(key);
    if (c) {
        Py_XSETREF(h->last_completion, Py_NewRef(c));
        h->last_nbytes = n;
    }
    return c;
}

/* future.set_result(completion): through the method descriptor for the futures made here
 * (their exact type: no method lookup per write). A new reference, or NULL. */
static PyObject *tcp_set_result(tcp_hot *h, PyObject *future, PyObject *completion) {
    PyObject *args[2] = {future, completion};
    if (h->set_result && Py_TYPE(future) == (PyTypeObject *)h->fut.future_type)
        return PyObject_Vectorcall(h->set_result, args, 2, NULL);
    return PyObject_VectorcallMethod(tn_set_result, args, 2, NULL);
}

/* A future of the transport's loop (a new reference), or NULL with an exception. */
static PyObject *tcp_future(tcp_hot *h) {
    PyObject *future;
    if (!h->fut.loop) return PyObject_CallNoArgs(h->make_future);
    future = zc_futures_new(&h->fut);
    if (future || PyErr_Occurred()) return future;
    return PyObject_CallNoArgs(h->make_future); /* the loop's futures are not plain */
}

/* h->zc_t, the tracker the queued paths need, asked for once where the transport makes it at
 * its first use (transport._tracker, a base.LazyTracker: getting it makes it and binds it here
 * through zc_tcp_zc_bind). NULL: none bound (Python's path), with an exception if making it
 * failed. A short connection that only write()s below the threshold never gets here. */
static zc_tracker *tcp_zc_tracker(PyObject *self, tcp_hot *h) {
    PyObject *tracker;
    if (h->zc_t || h->zc_asked) return h->zc_t;
    h->zc_asked = 1;
    tracker = PyObject_GetAttr(self, tn_tracker);
    Py_XDECREF(tracker);
    return h->zc_t;
}

/* transport.write_zc(buf) */
static PyObject *tcp_write_zc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *buf, *future = NULL, *call[4], *completion, *r;
    tcp_hot *h;
    const char *p;
    Py_ssize_t n, sent;
    struct iovec iov;
    int done;
    if (nargs != 1 || kwnames || !(h = tcp_hot_of(self)) || !tcp_simple_buffer(args[0], &p, &n))
        return tcp_call_pure(TCP_WRITE_ZC, self, args, nargs, kwnames);
    buf = args[0];
    if (n <= 0 || !tcp_direct(h, n) || !h->make_future) {
        if (PyErr_Occurred()) return NULL;
        if (n > 0 && tcp_zc_tracker(self, h) && (r = tcpzc_write(self, h, buf, p, n)) != TCPZC_PASS) return r;
        if (PyErr_Occurred()) return NULL;
        return tcp_call_method(self, tn_write_zc_queued, &buf, 1);
    }
    Py_INCREF(h);
    iov.iov_base = (void *)p;
    iov.iov_len = (size_t)n;
    done = tcp_send_direct(self, h, &iov, 1, n, &sent);
    if (done == TCP_SENT_FAILED) {
        Py_DECREF(h);
        return tcp_call_method(self, tn_failed_future, NULL, 0);
    }
    /* Future(loop=...) without Future.__init__ outside debug mode (zc_futures_new: ~1.4k of
     * the 4.7k instructions of a 64 KiB write_zc on asyncio, callgrind), else from the
     * transport's factory; after the counters (Python makes it before them: nothing the
     * counters call reads it). Sent whole: a done future, the last one again if nobody can
     * tell (zc_futures_done). */
    if (done < 0) goto fail;
    if (done == TCP_SENT_WHOLE) {
        h->copy_writes += 1;
        if (!(completion = tcp_copy_completion(self, h, n))) goto fail;
        future = zc_futures_done(&h->fut, h->set_result, &h->done, completion);
        if (future) r = Py_NewRef(Py_None);
        else if (PyErr_Occurred() || !(future = tcp_future(h))) r = NULL;
        else r = tcp_set_result(h, future, completion); /* the loop's futures are not plain */
        Py_DECREF(completion);
    } else if (!(future = tcp_future(h))) {
        goto fail;
    } else if ((done = tcpq_queue_zc_rest(self, h, buf, n, sent, future)) != 0) {
        r = done < 0 ? NULL : Py_NewRef(Py_None);
    } else {
        call[0] = buf;
        call[1] = PyLong_FromSsize_t(n);
        call[2] = PyLong_FromSsize_t(sent);
        call[3] = future;
        r = call[1] && call[2] ? tcp_call_method(self, tn_queue_zc_rest, call, 4) : NULL;
        Py_XDECREF(call[1]);
        Py_XDECREF(call[2]);
    }
    if (!r) goto fail;
    Py_DECREF(r);
    Py_DECREF(h);
    return future;
fail:
    Py_XDECREF(future);
    Py_DECREF(h);
    return NULL;
}

/* transport.writelines(list_of_data): one writev of 2..TCP_GATHER_MAX simple buffers, each
 * below _direct_max (the policy would copy each), with nothing queued. */
static PyObject *tcp_writelines(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *items;
    struct iovec iov[TCP_GATHER_MAX];
    tcp_hot *h;
    Py_ssize_t count, k, sent, left = 0, total = 0, index = 0;
    int r;
    if (nargs != 1 || kwnames || !(h = tcp_hot_of(self)))
        return tcp_call_pure(TCP_WRITELINES, self, args, nargs, kwnames);
    if (!(items = PySequence_List(args[0]))) return NULL; /* list(list_of_data), as Python */
    count = PyList_GET_SIZE(items);
    if (count < 2 || count > TCP_GATHER_MAX || !tcp_direct(h, 0)) goto python;
    for (k = 0; k < count; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        const char *p;
        Py_ssize_t n;
        /* every item below _direct_max: none could be wanted zero-copy (_gather_now's test);
         * (a 0-dim memoryview has no len(), which _gather_now asks: it raises) */
        if (!tcp_simple_buffer(item, &p, &n) || n >= h->direct_max ||
            (Py_TYPE(item) == &PyMemoryView_Type && ((PyMemoryViewObject *)item)->view.ndim == 0))
            goto python;
        iov[k].iov_base = (void *)p;
        iov[k].iov_len = (size_t)n;
        total += n;
    }
    if (!total) goto python;
    Py_INCREF(h);
    r = tcp_send_direct(self, h, iov, (int)count, total, &sent);
    Py_DECREF(h);
    if (r == TCP_SENT_PART) {
        /* sent 0: the socket is full, write() queues each from the first, as Python's */
        for (left = sent; index < count && left >= (Py_ssize_t)iov[index].iov_len; index++)
            left -= (Py_ssize_t)iov[index].iov_len;
        r = tcp_call_rest(self, tn_writelines_from, items, index, left);
    }
    Py_DECREF(items);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
python:
    if (PyErr_Occurred()) {
        Py_DECREF(items);
        return NULL;
    }
    r = tcp_call_void(self, tn_writelines_items, &items, 1);
    Py_DECREF(items);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* transport.is_closing(): self._closing (aiohttp asks before every write) */
static PyObject *tcp_is_closing(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *dict, *v;
    if (nargs || kwnames) return tcp_call_pure(TCP_IS_CLOSING, self, args, nargs, kwnames);
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    v = PyDict_GetItemWithError(dict, tn_closing);
    Py_XINCREF(v);
    Py_DECREF(dict);
    if (v || PyErr_Occurred()) return v;
    return tcp_call_pure(TCP_IS_CLOSING, self, args, nargs, kwnames);
}

static PyMethodDef tcp_method_defs[TCP_NMETHODS] = {
    {"write", (PyCFunction)(void (*)(void))tcp_write, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"write_zc", (PyCFunction)(void (*)(void))tcp_write_zc, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"writelines", (PyCFunction)(void (*)(void))tcp_writelines, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"is_closing", (PyCFunction)(void (*)(void))tcp_is_closing, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_resolve_range", (PyCFunction)(void (*)(void))tcp_resolve_range, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_drain_errqueue", (PyCFunction)(void (*)(void))tcp_drain_errqueue, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_flush", (PyCFunction)(void (*)(void))tcp_flush, METH_FASTCALL | METH_KEYWORDS, NULL},
};

static int tcp_intern(PyObject **slot, const char *name) {
    if (!*slot) *slot = PyUnicode_InternFromString(name);
    return *slot ? 0 : -1;
}

/* Let the TcpHot `hot` make its loop's plain futures in C: zc_futures_init's arguments.
 * 0, or -1 (not a TcpHot, out of memory): its make_future makes them. */
int zc_tcp_futures(intptr_t hot, intptr_t loop, intptr_t future_type, intptr_t debug, int64_t loop_offset) {
    tcp_hot *h = (tcp_hot *)hot;
    if (!tcp_hot_type || Py_TYPE((PyObject *)hot) != tcp_hot_type) return -1;
    zc_futures_clear(&h->fut);
    Py_CLEAR(h->set_result);
    memset(&h->fut, 0, sizeof h->fut);
    if (!(h->set_result = PyObject_GetAttrString((PyObject *)future_type, "set_result")) ||
        zc_futures_init(&h->fut, (PyObject *)loop, (PyObject *)future_type, (PyObject *)debug,
                        (Py_ssize_t)loop_offset) < 0) {
        Py_CLEAR(h->set_result);
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* Make the C methods of the TCP transport class `type` (whose Python methods are in the dict
 * `pures`: write, write_zc, writelines, is_closing, _resolve_range, _drain_errqueue, _flush; and which has the slot `_hot`) and put
 * them into the dict `into` by name, with the TcpHot type as "TcpHot". Once per process;
 * 0, or -1 with nothing put. */
int zc_tcp_methods(intptr_t type, intptr_t pures, intptr_t into) {
    static const char *signatures[TCP_NMETHODS] = {
        "write($self, data, /)", "write_zc($self, buf, /)", "writelines($self, list_of_data, /)",
        "is_closing($self, /)", "_resolve_range($self, lo, hi, copied, /)", "_drain_errqueue($self, /)",
        "_flush($self, /, head_wanted=False)"};
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *descrs[TCP_NMETHODS] = {NULL};
    Py_ssize_t hot_offset;
    int k, failed = 0;
    if (tcp_pure[0]) return -1;
    /* member_offset() and method_doc() are _core_pymeth.c's: one translation unit. */
    if ((hot_offset = member_offset(tp, "_hot")) < 0) return -1;
    if (tcp_intern(&tn_refresh_direct, "_refresh_direct") || tcp_intern(&tn_queue_rest, "_queue_rest") ||
        tcp_intern(&tn_write_queued, "_write_queued") || tcp_intern(&tn_fatal_error, "_fatal_error") ||
        tcp_intern(&tn_copy_completion, "_copy_completion") || tcp_intern(&tn_set_result, "set_result") ||
        tcp_intern(&tn_failed_future, "_failed_future") || tcp_intern(&tn_queue_zc_rest, "_queue_zc_rest") ||
        tcp_intern(&tn_write_zc_queued, "_write_zc_queued") ||
        tcp_intern(&tn_writelines_items, "_writelines_items") ||
        tcp_intern(&tn_writelines_from, "_writelines_from") || tcp_intern(&tn_closing, "_closing") ||
        tcp_intern(&tn_tracker, "_tracker")) {
        PyErr_Clear();
        return -1;
    }
    if (!tcp_hot_type && !(tcp_hot_type = (PyTypeObject *)PyType_FromSpec(&tcp_hot_spec))) {
        PyErr_Clear();
        return -1;
    }
    for (k = 0; k < TCP_NMETHODS && !failed; k++) {
        PyObject *pure = PyDict_GetItemString((PyObject *)pures, tcp_method_defs[k].ml_name);
        if (!pure) {
            failed = 1;
            break;
        }
        tcp_method_defs[k].ml_doc = method_doc(signatures[k], pure);
        descrs[k] = PyDescr_NewMethod(tp, &tcp_method_defs[k]);
        failed = !descrs[k];
    }
    for (k = 0; k < TCP_NMETHODS && !failed; k++)
        failed = PyDict_SetItemString((PyObject *)into, tcp_method_defs[k].ml_name, descrs[k]) < 0;
    if (!failed) failed = PyDict_SetItemString((PyObject *)into, "TcpHot", (PyObject *)tcp_hot_type) < 0;
    if (!failed) {
        tcp_hot_offset = hot_offset;
        for (k = 0; k < TCP_NMETHODS; k++) {
            tcp_pure[k] = PyDict_GetItemString((PyObject *)pures, tcp_method_defs[k].ml_name);
            Py_INCREF(tcp_pure[k]);
        }
    }
    for (k = 0; k < TCP_NMETHODS; k++) Py_XDECREF(descrs[k]);
    if (failed) {
        PyDict_Clear((PyObject *)into);
        PyErr_Clear();
        return -1;
    }
    return 0;
}
