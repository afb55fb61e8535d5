/* PinSet: the buffer exports of a batch of datagrams, and the sendmmsg that sends them.
 *
 * coalesce_zc=True (aiozc/datagram/coalescing.py) pinned each datagram with ffi.from_buffer
 * (~1.4k user instructions per datagram with its release), filled each iovec from Python
 * (MmsgSender.send: two cdata stores per datagram) and ended each pin from Python; measured
 * with callgrind, CPython 3.11. A PinSet takes the export (PyObject_GetBuffer, as
 * memoryview() would) in one call per datagram, fills the iovecs and calls sendmmsg in C,
 * and ends every export in one call. The batch path (batching.py) is the same for both
 * kinds of pins: `pins.sendmmsg(fd, start, stop, flags)` instead of MmsgSender.send.
 *
 * Ending an export may drop the last reference to an object whose finalizer runs Python
 * code, which may use this very set: release() empties the set before it ends any.
 */

#include <sys/socket.h>

#define PINS_MAX_BATCH 1024 /* UIO_MAXIOV: the kernel caps vlen at this, silently */

typedef struct {
    PyObject_HEAD
    Py_buffer *views;
    Py_ssize_t n, cap;
    long long nbytes;  /* sum of the views' lengths */
    long long uniform; /* every view's length while they are all alike, else -1 (none: 0) */
    long long maxlen;  /* the longest view's length */
} zc_pinset;

/* The sendmmsg headers, each wired to its own iovec once: one set for the process, used only
 * while the GIL is held (the core's calls keep it, _core_nogil.h). A set per PinSet (one per
 * flush) measured ~330 instructions per datagram of calloc and memset. */
static struct mmsghdr pins_msgs[PINS_MAX_BATCH];
static struct iovec pins_iovs[PINS_MAX_BATCH];
static int pins_wired;

static PyObject *pins_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "PinSet() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static void pins_release_all(zc_pinset *p) {
    Py_buffer *views = p->views;
    Py_ssize_t n = p->n, k;
    p->views = NULL;
    p->n = p->cap = 0;
    p->nbytes = p->uniform = p->maxlen = 0;
    for (k = 0; k < n; k++) PyBuffer_Release(&views[k]);
    PyMem_Free(views);
}

static void pins_dealloc(PyObject *self) {
    zc_pinset *p = (zc_pinset *)self;
    PyTypeObject *type = Py_TYPE(self);
    pins_release_all(p);
    type->tp_free(self);
    Py_DECREF(type); /* a heap type: its instances hold a reference */
}

static Py_ssize_t pins_len(PyObject *self) { return ((zc_pinset *)self)->n; }

/* Export buf into the next view: its length, or -1 (TypeError or BufferError, as memoryview()
 * would raise, or out of memory). */
static Py_ssize_t pins_push(zc_pinset *p, PyObject *buf) {
    Py_ssize_t len;
    if (p->n == p->cap) {
        Py_ssize_t cap = p->cap ? p->cap * 2 : 64;
        Py_buffer *views = PyMem_Realloc(p->views, (size_t)cap * sizeof *views);
        if (!views) {
            PyErr_NoMemory();
            return -1;
        }
        p->views = views;
        p->cap = cap;
    }
    if (PyObject_GetBuffer(buf, &p->views[p->n], PyBUF_SIMPLE) < 0) return -1;
    len = p->views[p->n++].len;
    p->nbytes += len;
    if (p->n == 1) p->uniform = len;
    else if (p->uniform != len) p->uniform = -1;
    if (len > p->maxlen) p->maxlen = len;
    return len;
}

/* The figures of views 0..n-1 again (after some left the set). */
static void pins_recount(zc_pinset *p) {
    Py_ssize_t k;
    p->nbytes = p->maxlen = 0;
    p->uniform = p->n ? p->views[0].len : 0;
    for (k = 0; k < p->n; k++) {
        Py_ssize_t len = p->views[k].len;
        p->nbytes += len;
        if (len != p->uniform) p->uniform = -1;
        if (len > p->maxlen) p->maxlen = len;
    }
}

/* add(buf) -> nbytes: export buf (C-contiguous; TypeError or BufferError otherwise). */
static PyObject *pins_add(PyObject *self, PyObject *buf) {
    Py_ssize_t len = pins_push((zc_pinset *)self, buf);
    return len < 0 ? NULL : PyLong_FromSsize_t(len);
}

/* Room for `more` views beyond n: one allocation for a batch (growing 64 -> 128 -> 256
 * moved ~6k instructions of views each time, callgrind). 0, or -1 (MemoryError). */
static int pins_reserve(zc_pinset *p, Py_ssize_t more) {
    Py_buffer *views;
    if (p->n + more <= p->cap) return 0;
    views = PyMem_Realloc(p->views, (size_t)(p->n + more) * sizeof *views);
    if (!views) {
        PyErr_NoMemory();
        return -1;
    }
    p->views = views;
    p->cap = p->n + more;
    return 0;
}

/* extend(bufs): add() each buffer of the iterable, in one call. On an error the exports made
 * so far stay in the set (the caller releases them). */
static PyObject *pins_extend(PyObject *self, PyObject *bufs) {
    zc_pinset *p = (zc_pinset *)self;
    PyObject *seq = PySequence_Fast(bufs, "extend() takes an iterable of buffers"), *item;
    Py_ssize_t k, len = 0;
    if (!seq) return NULL;
    if (pins_reserve(p, PySequence_Fast_GET_SIZE(seq)) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    /* the size re-read each time: an exporter may run code that changes a list */
    for (k = 0; len >= 0 && k < PySequence_Fast_GET_SIZE(seq); k++) {
        item = PySequence_Fast_GET_ITEM(seq, k);
        Py_INCREF(item);
        len = pins_push(p, item);
        Py_DECREF(item);
    }
    Py_DECREF(seq);
    if (len < 0) return NULL;
    Py_RETURN_NONE;
}

/* sendmmsg(fd, start, stop, flags): datagrams start:stop (at most 1024) on connected fd.
 * Returns how many the kernel took (>= 1), or -errno if the first failed (see mmsg.py). */
static PyObject *pins_sendmmsg(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    zc_pinset *p = (zc_pinset *)self;
    long fd, flags;
    Py_ssize_t start, stop, k;
    int r;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "sendmmsg(fd, start, stop, flags)");
        return NULL;
    }
    fd = PyLong_AsLong(args[0]);
    start = PyLong_AsSsize_t(args[1]);
    stop = PyLong_AsSsize_t(args[2]);
    flags = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (start < 0 || stop > p->n || start >= stop) {
        PyErr_SetString(PyExc_IndexError, "sendmmsg: no datagrams in start:stop");
        return NULL;
    }
    if (stop - start > PINS_MAX_BATCH) stop = start + PINS_MAX_BATCH;
    if (!pins_wired) {
        for (k = 0; k < PINS_MAX_BATCH; k++) {
            pins_msgs[k].msg_hdr.msg_iov = &pins_iovs[k];
            pins_msgs[k].msg_hdr.msg_iovlen = 1;
        }
        pins_wired = 1;
    }
    for (k = start; k < stop; k++) {
        pins_iovs[k - start].iov_base = p->views[k].buf;
        pins_iovs[k - start].iov_len = (size_t)p->views[k].len;
    }
    r = sendmmsg((int)fd, pins_msgs, (unsigned int)(stop - start), (int)flags);
    return PyLong_FromLong(r < 0 ? -errno : r);
}

/* take() -> PinSet: a new set with this one's exports (this one is left empty). */
static PyObject *pins_take(PyObject *self, PyObject *unused) {
    zc_pinset *p = (zc_pinset *)self, *q;
    q = (zc_pinset *)Py_TYPE(self)->tp_alloc(Py_TYPE(self), 0);
    if (!q) return NULL;
    q->views = p->views;
    q->n = p->n;
    q->cap = p->cap;
    q->nbytes = p->nbytes;
    q->uniform = p->uniform;
    q->maxlen = p->maxlen;
    p->views = NULL;
    p->n = p->cap = 0;
    p->nbytes = p->uniform = p->maxlen = 0;
    return (PyObject *)q;
}

/* split(count) -> PinSet: a new set with the first `count` exports; this one keeps the rest. */
static PyObject *pins_split(PyObject *self, PyObject *arg) {
    zc_pinset *p = (zc_pinset *)self, *q;
    Py_ssize_t count = PyLong_AsSsize_t(arg);
    if (count == -1 && PyErr_Occurred()) return NULL;
    if (count < 0 || count > p->n) {
        PyErr_SetString(PyExc_IndexError, "split: count out of range");
        return NULL;
    }
    if (count == p->n) return pins_take(self, NULL);
    q = (zc_pinset *)Py_TYPE(self)->tp_alloc(Py_TYPE(self), 0);
    if (!q) return NULL;
    if (count) {
        q->views = PyMem_Malloc((size_t)count * sizeof *q->views);
        if (!q->views) {
            Py_DECREF(q);
            return PyErr_NoMemory();
        }
        memcpy(q->views, p->views, (size_t)count * sizeof *q->views);
        memmove(p->views, p->views + count, (size_t)(p->n - count) * sizeof *p->views);
        q->n = q->cap = count;
        p->n -= count;
        pins_recount(q);
        pins_recount(p);
    }
    return (PyObject *)q;
}

/* addresses() -> list: each held buffer's address (the pure io_uring path fills SQEs with them). */
static PyObject *pins_addresses(PyObject *self, PyObject *unused) {
    zc_pinset *p = (zc_pinset *)self;
    PyObject *list = PyList_New(p->n), *addr;
    Py_ssize_t k;
    if (!list) return NULL;
    for (k = 0; k < p->n; k++) {
        addr = PyLong_FromVoidPtr(p->views[k].buf);
        if (!addr) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, addr);
    }
    return list;
}

/* release(): end every export now (the set is empty afterwards). */
static PyObject *pins_release(PyObject *self, PyObject *unused) {
    pins_release_all((zc_pinset *)self);
    Py_RETURN_NONE;
}

/* sizes() -> list: each held buffer's length, in order. */
static PyObject *pins_sizes(PyObject *self, PyObject *unused) {
    zc_pinset *p = (zc_pinset *)self;
    PyObject *list = PyList_New(p->n), *size;
    Py_ssize_t k;
    if (!list) return NULL;
    for (k = 0; k < p->n; k++) {
        size = PyLong_FromSsize_t(p->views[k].len);
        if (!size) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, size);
    }
    return list;
}

static PyObject *pins_get_nbytes(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_pinset *)self)->nbytes);
}

static PyObject *pins_get_uniform(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_pinset *)self)->uniform);
}

static PyObject *pins_get_maxlen(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_pinset *)self)->maxlen);
}

static PyMethodDef pins_methods[] = {
    {"add", pins_add, METH_O, "add(buf) -> nbytes: hold buf's buffer export"},
    {"extend", pins_extend, METH_O, "extend(bufs): add() each buffer"},
    {"split", pins_split, METH_O, "split(count) -> a PinSet with the first count exports"},
    {"addresses", pins_addresses, METH_NOARGS, "addresses() -> each buffer's address"},
    {"sendmmsg", (PyCFunction)(void (*)(void))pins_sendmmsg, METH_FASTCALL,
     "sendmmsg(fd, start, stop, flags) -> datagrams sent, or -errno"},
    {"take", pins_take, METH_NOARGS, "take() -> a PinSet with these exports; this one empties"},
    {"release", pins_release, METH_NOARGS, "release(): end every export"},
    {"sizes", pins_sizes, METH_NOARGS, "sizes() -> each buffer's length"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pins_getset[] = {
    {"nbytes", pins_get_nbytes, NULL, "bytes of every held buffer", NULL},
    {"uniform", pins_get_uniform, NULL, "every buffer's length if all are alike, else -1", NULL},
    {"maxlen", pins_get_maxlen, NULL, "the longest buffer's length", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pins_slots[] = {
    {Py_tp_new, pins_new},
    {Py_tp_dealloc, pins_dealloc},
    {Py_tp_methods, pins_methods},
    {Py_tp_getset, pins_getset},
    {Py_sq_length, pins_len},
    {Py_tp_doc, "Buffer exports of a datagram batch (aiozc/_sys/_core_pins.c)."},
    {0, NULL},
};

static PyType_Spec pins_spec = {"aiozc._sys._core.PinSet", sizeof(zc_pinset), 0, Py_TPFLAGS_DEFAULT, pins_slots};

static PyObject *pins_set_result_name, *pins_invalid_state, *pins_future_type, *pins_set_result;

/* future.set_result(result); 0, 1 if the future was cancelled (InvalidStateError), -1. For a
 * plain asyncio.Future the method descriptor is called directly: no attribute lookup per
 * future (~200 of ~380 user instructions each, callgrind). */
static int pins_set_one(PyObject *future, PyObject *result) {
    PyObject *r;
    if (pins_set_result && Py_TYPE(future) == (PyTypeObject *)pins_future_type) {
        PyObject *args[2] = {future, result};
        r = PyObject_Vectorcall(pins_set_result, args, 2, NULL);
    } else {
        r = PyObject_CallMethodOneArg(future, pins_set_result_name, result);
    }
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    if (!PyErr_ExceptionMatches(pins_invalid_state)) return -1;
    PyErr_Clear(); /* cancelled: cheaper than asking done() each time */
    return 1;
}

/* set_results(futures, result): future.set_result(result) for each future of the list, but
 * those already done (cancelled): the coalesced flush's fan-out (coalescing._FanOut). */
static PyObject *pins_set_results(PyObject *unused, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t k;
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "set_results(list of futures, result)");
        return NULL;
    }
    for (k = 0; k < PyList_GET_SIZE(args[0]); k++)
        if (pins_set_one(PyList_GET_ITEM(args[0], k), args[1]) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef pins_functions[] = {
    {"set_results", (PyCFunction)(void (*)(void))pins_set_results, METH_FASTCALL,
     "set_results(futures, result): set_result on each future not yet done"},
    {NULL, NULL, 0, NULL},
};

/* zc_pins_export, which also exports the Coalescer: at the end of _core_coalesce.c. */
