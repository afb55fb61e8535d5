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
    long long nbytes; /* sum of the views' lengths */
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
    p->nbytes = 0;
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

/* add(buf) -> nbytes: export buf (C-contiguous; TypeError or BufferError otherwise). */
static PyObject *pins_add(PyObject *self, PyObject *buf) {
    zc_pinset *p = (zc_pinset *)self;
    if (p->n == p->cap) {
        Py_ssize_t cap = p->cap ? p->cap * 2 : 64;
        Py_buffer *views = PyMem_Realloc(p->views, (size_t)cap * sizeof *views);
        if (!views) return PyErr_NoMemory();
        p->views = views;
        p->cap = cap;
    }
    if (PyObject_GetBuffer(buf, &p->views[p->n], PyBUF_SIMPLE) < 0) return NULL;
    p->nbytes += p->views[p->n].len;
    return PyLong_FromSsize_t(p->views[p->n++].len);
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
    p->views = NULL;
    p->n = p->cap = 0;
    p->nbytes = 0;
    return (PyObject *)q;
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

static PyMethodDef pins_methods[] = {
    {"add", pins_add, METH_O, "add(buf) -> nbytes: hold buf's buffer export"},
    {"sendmmsg", (PyCFunction)(void (*)(void))pins_sendmmsg, METH_FASTCALL,
     "sendmmsg(fd, start, stop, flags) -> datagrams sent, or -errno"},
    {"take", pins_take, METH_NOARGS, "take() -> a PinSet with these exports; this one empties"},
    {"release", pins_release, METH_NOARGS, "release(): end every export"},
    {"sizes", pins_sizes, METH_NOARGS, "sizes() -> each buffer's length"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pins_getset[] = {
    {"nbytes", pins_get_nbytes, NULL, "bytes of every held buffer", NULL},
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

static PyObject *pins_set_result_name, *pins_invalid_state;

/* set_results(futures, result): future.set_result(result) for each future of the list, but
 * those already done (cancelled): the coalesced flush's fan-out (coalescing._FanOut). */
static PyObject *pins_set_results(PyObject *unused, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t k;
    PyObject *r;
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "set_results(list of futures, result)");
        return NULL;
    }
    for (k = 0; k < PyList_GET_SIZE(args[0]); k++) {
        r = PyObject_CallMethodOneArg(PyList_GET_ITEM(args[0], k), pins_set_result_name, args[1]);
        if (r) {
            Py_DECREF(r);
        } else if (PyErr_ExceptionMatches(pins_invalid_state)) {
            PyErr_Clear(); /* cancelled: cheaper than asking done() each time */
        } else {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef pins_functions[] = {
    {"set_results", (PyCFunction)(void (*)(void))pins_set_results, METH_FASTCALL,
     "set_results(futures, result): set_result on each future not yet done"},
    {NULL, NULL, 0, NULL},
};

/* Put the PinSet type and set_results into the dict `into`; `invalid_state` is
 * asyncio.InvalidStateError. 0, or -1 (error cleared). */
int zc_pins_export(intptr_t into, intptr_t invalid_state) {
    PyObject *type = PyType_FromSpec(&pins_spec), *fn = NULL;
    int r = -1;
    if (!pins_set_result_name) pins_set_result_name = PyUnicode_InternFromString("set_result");
    if (!pins_invalid_state) {
        pins_invalid_state = (PyObject *)invalid_state;
        Py_INCREF(pins_invalid_state);
    }
    if (type && pins_set_result_name) fn = PyCFunction_New(&pins_functions[0], NULL);
    if (fn && PyDict_SetItemString((PyObject *)into, "PinSet", type) == 0)
        r = PyDict_SetItemString((PyObject *)into, "set_results", fn);
    Py_XDECREF(type);
    Py_XDECREF(fn);
    if (r < 0) PyErr_Clear();
    return r;
}
