/* The TCP transport's write(), write_zc() and writelines() on the direct path, as C methods
 * of the transport class (aiozc/transport.py, aiozc/streamsend.py).
 *
 * The direct path is one write(2) / writev(2) of what the policy would copy anyway, with
 * nothing queued ahead of it. In Python that was a method frame, six instance attribute reads
 * on a transport whose instance dict is too large for CPython 3.11's specialized attribute
 * access, os.write's argument clinic and four counter updates: ~3k user instructions for a
 * 1-byte write on uvloop against uvloop's own ~0.45k (callgrind). These methods do the same
 * steps in the same order on the same state: the instance dict's _direct_max, _queue, _fd,
 * _plain_sent, _plain_budget, the stats object's copy_sends / copy_bytes / copy_writes.
 *
 * Anything else goes to the Python methods the class had (the reference, and the only path
 * with AIOZC_NO_EXTENSIONS=1): another call form, a buffer that is not an exact bytes /
 * bytearray / live C-contiguous memoryview, an empty one, a write the policy might send
 * zero-copy, a queue that is not empty, a state name missing from the instance dict. What
 * the socket did not take and a send error go to the same Python helpers the Python methods
 * call at that point (_queue_rest, _queue_zc_rest, _writelines_from, _fatal_error), so what
 * follows the send is the Python code itself.
 *
 * The system calls keep the GIL (non-blocking sockets, as the rest of the core). */

#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#define TCP_GATHER_MAX 64 /* streamsend._GATHER_MAX */

enum { TCP_WRITE, TCP_WRITE_ZC, TCP_WRITELINES, TCP_IS_CLOSING, TCP_NMETHODS };

static PyObject *tcp_pure[TCP_NMETHODS]; /* the class's Python methods */
static PyObject *tn_direct_max, *tn_queue, *tn_fd, *tn_stats, *tn_plain_sent, *tn_plain_budget,
    *tn_copy_sends, *tn_copy_bytes, *tn_copy_writes, *tn_refresh_direct, *tn_queue_rest,
    *tn_write_queued, *tn_fatal_error, *tn_make_future, *tn_copy_completions, *tn_copy_completion,
    *tn_set_result, *tn_failed_future, *tn_queue_zc_rest, *tn_write_zc_queued, *tn_writelines_items,
    *tn_writelines_from, *tn_closing;

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

/* An int state attribute from the instance dict: 1, or 0 where it is not there or not an int
 * that fits (the Python method then runs), -1 with an exception. */
static int tcp_dict_long(PyObject *dict, PyObject *name, long long *out) {
    PyObject *v = PyDict_GetItemWithError(dict, name); /* borrowed */
    int overflow;
    if (!v) return PyErr_Occurred() ? -1 : 0;
    if (!PyLong_CheckExact(v)) return 0;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (*out == -1 && PyErr_Occurred()) return -1;
    return !overflow;
}

/* obj.<name> += n, generic (getattr, +=, setattr). */
static int tcp_attr_add(PyObject *obj, PyObject *name, long long n) {
    PyObject *v = PyObject_GetAttr(obj, name), *d, *w;
    int r;
    if (!v) return -1;
    d = PyLong_FromLongLong(n);
    w = d ? PyNumber_InPlaceAdd(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (!w) return -1;
    r = PyObject_SetAttr(obj, name, w);
    Py_DECREF(w);
    return r;
}

/* obj.<name> += n where `dict` is obj's instance dict and <name> no data descriptor of its
 * class: an int held in the dict is replaced in place (a dict store costs a fraction of
 * setattr's, measured: ~0.7k instructions per counter update the generic way); anything
 * else the generic way. */
static int tcp_dict_add(PyObject *obj, PyObject *dict, PyObject *name, long long n) {
    PyObject *v = PyDict_GetItemWithError(dict, name), *w; /* borrowed */
    long long x;
    int overflow, r;
    if (!v) return PyErr_Occurred() ? -1 : tcp_attr_add(obj, name, n);
    if (!PyLong_CheckExact(v)) return tcp_attr_add(obj, name, n);
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred()) || x > LLONG_MAX - n) {
        PyErr_Clear();
        return tcp_attr_add(obj, name, n);
    }
    if (!(w = PyLong_FromLongLong(x + n))) return -1;
    r = PyDict_SetItem(dict, name, w);
    Py_DECREF(w);
    return r;
}

/* Is <name> a data descriptor (a property...) of obj's class? Then its dict is not the truth. */
static int tcp_descriptor(PyObject *obj, PyObject *name) {
    PyObject *descr = _PyType_Lookup(Py_TYPE(obj), name); /* borrowed; cached by the type */
    return descr && Py_TYPE(descr)->tp_descr_set;
}

/* stats.<name> += n on the transport's stats object (a TransportStats dataclass: its counters
 * live in its instance dict). */
static int tcp_stats_add(PyObject *stats, PyObject *name, long long n) {
    PyObject *dict;
    int r;
    if (tcp_descriptor(stats, name) || !(Py_TYPE(stats)->tp_flags & Py_TPFLAGS_MANAGED_DICT))
        return tcp_attr_add(stats, name, n);
    if (!(dict = PyObject_GenericGetDict(stats, NULL))) return -1;
    r = tcp_dict_add(stats, dict, name, n);
    Py_DECREF(dict);
    return r;
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

/* What the direct path decides before its send: 1 (go: *fd, and the instance dict in *dictp,
 * a new reference), 0 (the Python method runs), -1 (an exception). ``nbytes`` is the write's
 * size (checked against _direct_max; 0 skips that check: writelines checks each item). */
static int tcp_direct_open(PyObject *self, Py_ssize_t nbytes, PyObject **dictp, int *fd) {
    PyObject *dict = PyObject_GenericGetDict(self, NULL), *queue;
    long long direct_max, v;
    int r, empty;
    if (!dict) return -1;
    if ((r = tcp_dict_long(dict, tn_direct_max, &direct_max)) <= 0) goto out;
    r = 0;
    if (nbytes >= direct_max || direct_max <= 0) goto out;
    queue = PyDict_GetItemWithError(dict, tn_queue); /* borrowed */
    if (!queue) {
        r = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    if ((empty = PyObject_Not(queue)) <= 0) {
        r = empty; /* 0: queued data goes first (the Python method), -1: an exception */
        goto out;
    }
    if ((r = tcp_dict_long(dict, tn_fd, &v)) <= 0) goto out;
    *fd = (int)v;
    *dictp = dict;
    return 1;
out:
    Py_DECREF(dict);
    return r;
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
static int tcp_count_sent(PyObject *self, PyObject *dict, Py_ssize_t sent) {
    PyObject *stats = PyDict_GetItemWithError(dict, tn_stats);
    long long plain, budget;
    int r;
    if (!stats) {
        if (PyErr_Occurred()) return -1;
        stats = PyObject_GetAttr(self, tn_stats);
        if (!stats) return -1;
    } else {
        Py_INCREF(stats);
    }
    r = tcp_stats_add(stats, tn_copy_sends, 1) < 0 || tcp_stats_add(stats, tn_copy_bytes, sent) < 0;
    Py_DECREF(stats);
    if (r || tcp_dict_add(self, dict, tn_plain_sent, sent) < 0) return -1;
    if (tcp_dict_long(dict, tn_plain_sent, &plain) == 1 && tcp_dict_long(dict, tn_plain_budget, &budget) == 1) {
        r = plain >= budget;
    } else { /* not plain ints: Python's comparison */
        PyObject *a, *b;
        if (PyErr_Occurred()) return -1;
        a = PyObject_GetAttr(self, tn_plain_sent);
        b = a ? PyObject_GetAttr(self, tn_plain_budget) : NULL;
        r = b ? PyObject_RichCompareBool(a, b, Py_GE) : -1;
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    if (r < 0) return -1;
    return r ? tcp_call_void(self, tn_refresh_direct, NULL, 0) : 0;
}

/* transport.write(data) */
static PyObject *tcp_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *data, *dict = NULL, *call[3];
    const char *p;
    Py_ssize_t n, sent;
    struct iovec iov;
    int fd, r;
    if (nargs != 1 || kwnames) return tcp_call_pure(TCP_WRITE, self, args, nargs, kwnames);
    data = args[0];
    if (!tcp_simple_buffer(data, &p, &n)) return tcp_call_pure(TCP_WRITE, self, args, nargs, kwnames);
    if (n <= 0) goto queued;
    if ((r = tcp_direct_open(self, n, &dict, &fd)) < 0) return NULL;
    if (!r) goto queued;
    iov.iov_base = (void *)p;
    iov.iov_len = (size_t)n;
    sent = tcp_send(fd, &iov, 1);
    if (sent < 0) {
        r = tcp_fatal(self);
        goto done;
    }
    r = 0;
    if (sent && (r = tcp_count_sent(self, dict, sent)) < 0) goto done;
    if (sent == n) goto done;
    call[0] = data;
    if (!(call[1] = PyLong_FromSsize_t(n))) goto fail;
    if (!(call[2] = PyLong_FromSsize_t(sent))) {
        Py_DECREF(call[1]);
        goto fail;
    }
    r = tcp_call_void(self, tn_queue_rest, call, 3);
    Py_DECREF(call[1]);
    Py_DECREF(call[2]);
done:
    Py_DECREF(dict);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
fail:
    Py_DECREF(dict);
    return NULL;
queued:
    if (PyErr_Occurred()) return NULL;
    return tcp_call_method(self, tn_write_queued, &data, 1);
}

/* The Completion of a write of `n` bytes sent whole by copy: _copy_completions.get(n) or
 * _copy_completion(n), as write_zc()'s direct path. A new reference. */
static PyObject *tcp_copy_completion(PyObject *self, PyObject *dict, Py_ssize_t n) {
    PyObject *cache = PyDict_GetItemWithError(dict, tn_copy_completions), *key, *c = NULL;
    if (!cache && PyErr_Occurred()) return NULL;
    if (!(key = PyLong_FromSsize_t(n))) return NULL;
    if (cache && PyDict_CheckExact(cache)) {
        c = PyDict_GetItemWithError(cache, key);
        if (c) {
            Py_INCREF(c);
        } else if (PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
    }
    if (!c || !PyObject_IsTrue(c)) {
        Py_XDECREF(c);
        c = tcp_call_method(self, tn_copy_completion, &key, 1);
    }
    Py_DECREF(key);
    return c;
}

/* transport.write_zc(buf) */
static PyObject *tcp_write_zc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *buf, *dict = NULL, *future = NULL, *maker, *call[4], *stats, *completion, *r;
    const char *p;
    Py_ssize_t n, sent;
    struct iovec iov;
    int fd, go;
    if (nargs != 1 || kwnames) return tcp_call_pure(TCP_WRITE_ZC, self, args, nargs, kwnames);
    buf = args[0];
    if (!tcp_simple_buffer(buf, &p, &n)) return tcp_call_pure(TCP_WRITE_ZC, self, args, nargs, kwnames);
    if (n <= 0) goto queued;
    if ((go = tcp_direct_open(self, n, &dict, &fd)) < 0) return NULL;
    if (!go) goto queued;
    iov.iov_base = (void *)p;
    iov.iov_len = (size_t)n;
    sent = tcp_send(fd, &iov, 1);
    if (sent < 0) {
        Py_DECREF(dict);
        if (tcp_fatal(self) < 0) return NULL;
        return tcp_call_method(self, tn_failed_future, NULL, 0);
    }
    /* Future(loop=...) from the transport's factory, made after the send as in Python */
    maker = PyDict_GetItemWithError(dict, tn_make_future);
    if (maker) {
        future = PyObject_CallNoArgs(maker);
    } else if (!PyErr_Occurred()) {
        future = PyObject_CallMethodNoArgs(self, tn_make_future);
    }
    if (!future) goto fail;
    if (sent && tcp_count_sent(self, dict, sent) < 0) goto fail;
    if (sent == n) {
        stats = PyObject_GetAttr(self, tn_stats);
        if (!stats) goto fail;
        go = tcp_stats_add(stats, tn_copy_writes, 1);
        Py_DECREF(stats);
        if (go < 0 || !(completion = tcp_copy_completion(self, dict, n))) goto fail;
        call[0] = future;
        call[1] = completion;
        r = PyObject_VectorcallMethod(tn_set_result, call, 2, NULL);
        Py_DECREF(completion);
        if (!r) goto fail;
        Py_DECREF(r);
        Py_DECREF(dict);
        return future;
    }
    call[0] = buf;
    call[1] = PyLong_FromSsize_t(n);
    call[2] = PyLong_FromSsize_t(sent);
    call[3] = future;
    r = call[1] && call[2] ? tcp_call_method(self, tn_queue_zc_rest, call, 4) : NULL;
    Py_XDECREF(call[1]);
    Py_XDECREF(call[2]);
    if (!r) goto fail;
    Py_DECREF(r);
    Py_DECREF(dict);
    return future;
fail:
    Py_XDECREF(future);
    Py_XDECREF(dict);
    return NULL;
queued:
    if (PyErr_Occurred()) return NULL;
    return tcp_call_method(self, tn_write_zc_queued, &buf, 1);
}

/* transport.writelines(list_of_data): one writev of 2..TCP_GATHER_MAX simple buffers, each
 * below _direct_max (the policy would copy each), with nothing queued. */
static PyObject *tcp_writelines(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *items, *dict = NULL, *call[3];
    struct iovec iov[TCP_GATHER_MAX];
    Py_ssize_t count, k, sent, left, total = 0, index;
    long long direct_max;
    int fd, r;
    if (nargs != 1 || kwnames) return tcp_call_pure(TCP_WRITELINES, self, args, nargs, kwnames);
    if (!(items = PySequence_List(args[0]))) return NULL; /* list(list_of_data), as Python */
    count = PyList_GET_SIZE(items);
    if (count < 2 || count > TCP_GATHER_MAX) goto python;
    for (k = 0; k < count; k++) {
        const char *p;
        Py_ssize_t n;
        PyObject *item = PyList_GET_ITEM(items, k);
        /* (a 0-dim memoryview has no len(), which Python's _gather_now asks: it raises) */
        if (!tcp_simple_buffer(item, &p, &n) ||
            (Py_TYPE(item) == &PyMemoryView_Type && ((PyMemoryViewObject *)item)->view.ndim == 0))
            goto python;
        iov[k].iov_base = (void *)p;
        iov[k].iov_len = (size_t)n;
        total += n;
    }
    if ((r = tcp_direct_open(self, 0, &dict, &fd)) < 0) goto fail;
    if (!r) goto python;
    /* every item below _direct_max: none could be wanted zero-copy (_gather_now's test) */
    if ((r = tcp_dict_long(dict, tn_direct_max, &direct_max)) <= 0) goto python_dict;
    for (k = 0; k < count; k++)
        if ((long long)iov[k].iov_len >= direct_max) goto python_dict;
    if (!total) goto python_dict;
    sent = tcp_send(fd, iov, (int)count);
    if (sent < 0) {
        r = tcp_fatal(self);
        Py_DECREF(dict);
        Py_DECREF(items);
        if (r < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (!sent) { /* the socket is full: write() queues each, as Python's */
        Py_DECREF(dict);
        index = left = 0;
        goto rest;
    }
    if (tcp_count_sent(self, dict, sent) < 0) goto fail;
    Py_DECREF(dict);
    dict = NULL;
    if (sent == total) {
        Py_DECREF(items);
        Py_RETURN_NONE;
    }
    for (index = 0, left = sent; index < count && left >= (Py_ssize_t)iov[index].iov_len; index++)
        left -= (Py_ssize_t)iov[index].iov_len;
rest:
    call[0] = items;
    call[1] = PyLong_FromSsize_t(index);
    call[2] = PyLong_FromSsize_t(left);
    r = call[1] && call[2] ? tcp_call_void(self, tn_writelines_from, call, 3) : -1;
    Py_XDECREF(call[1]);
    Py_XDECREF(call[2]);
    Py_DECREF(items);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
python_dict:
    Py_DECREF(dict);
    if (r < 0) goto fail;
python:
    r = tcp_call_void(self, tn_writelines_items, &items, 1);
    Py_DECREF(items);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
fail:
    Py_XDECREF(dict);
    Py_DECREF(items);
    return NULL;
}

/* transport.is_closing(): self._closing (aiohttp asks before every write) */
static PyObject *tcp_is_closing(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *dict, *v;
    if (nargs || kwnames) return tcp_call_pure(TCP_IS_CLOSING, self, args, nargs, kwnames);
    if (!(dict = PyObject_GenericGetDict(self, NULL))) return NULL;
    v = PyDict_GetItemWithError(dict, tn_closing);
    Py_DECREF(dict);
    if (v) {
        Py_INCREF(v);
        return v;
    }
    if (PyErr_Occurred()) return NULL;
    return tcp_call_pure(TCP_IS_CLOSING, self, args, nargs, kwnames);
}

static PyMethodDef tcp_method_defs[TCP_NMETHODS] = {
    {"write", (PyCFunction)(void (*)(void))tcp_write, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"write_zc", (PyCFunction)(void (*)(void))tcp_write_zc, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"writelines", (PyCFunction)(void (*)(void))tcp_writelines, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"is_closing", (PyCFunction)(void (*)(void))tcp_is_closing, METH_FASTCALL | METH_KEYWORDS, NULL},
};

/* `signature\n--\n\n` and the Python method's docstring: help() and inspect read them. */
static const char *tcp_doc(const char *signature, PyObject *pure) {
    PyObject *doc = PyObject_GetAttrString(pure, "__doc__");
    const char *text = doc && PyUnicode_Check(doc) ? PyUnicode_AsUTF8(doc) : "";
    size_t n;
    char *out;
    if (!text) text = "";
    n = strlen(signature) + strlen(text) + 8;
    out = malloc(n); /* kept for the life of the process, as a static docstring */
    if (out) snprintf(out, n, "%s\n--\n\n%s", signature, text);
    Py_XDECREF(doc);
    PyErr_Clear();
    return out;
}

static int tcp_intern(PyObject **slot, const char *name) {
    if (!*slot) *slot = PyUnicode_InternFromString(name);
    return *slot ? 0 : -1;
}

/* Make the C methods of the TCP transport class `type` whose Python methods are in the dict
 * `pures` (write, write_zc, writelines, is_closing) and put them into the dict `into` by
 * name. Once per process; 0, or -1 with nothing put. */
int zc_tcp_methods(intptr_t type, intptr_t pures, intptr_t into) {
    static const char *signatures[TCP_NMETHODS] = {
        "write($self, data, /)", "write_zc($self, buf, /)", "writelines($self, list_of_data, /)",
        "is_closing($self, /)"};
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *descrs[TCP_NMETHODS] = {NULL};
    int k, failed = 0;
    if (tcp_pure[0]) return -1;
    if (tcp_intern(&tn_direct_max, "_direct_max") || tcp_intern(&tn_queue, "_queue") ||
        tcp_intern(&tn_fd, "_fd") || tcp_intern(&tn_stats, "stats") ||
        tcp_intern(&tn_plain_sent, "_plain_sent") || tcp_intern(&tn_plain_budget, "_plain_budget") ||
        tcp_intern(&tn_copy_sends, "copy_sends") || tcp_intern(&tn_copy_bytes, "copy_bytes") ||
        tcp_intern(&tn_copy_writes, "copy_writes") || tcp_intern(&tn_refresh_direct, "_refresh_direct") ||
        tcp_intern(&tn_queue_rest, "_queue_rest") || tcp_intern(&tn_write_queued, "_write_queued") ||
        tcp_intern(&tn_fatal_error, "_fatal_error") || tcp_intern(&tn_make_future, "_make_future") ||
        tcp_intern(&tn_copy_completions, "_copy_completions") ||
        tcp_intern(&tn_copy_completion, "_copy_completion") || tcp_intern(&tn_set_result, "set_result") ||
        tcp_intern(&tn_failed_future, "_failed_future") || tcp_intern(&tn_queue_zc_rest, "_queue_zc_rest") ||
        tcp_intern(&tn_write_zc_queued, "_write_zc_queued") ||
        tcp_intern(&tn_writelines_items, "_writelines_items") ||
        tcp_intern(&tn_writelines_from, "_writelines_from") || tcp_intern(&tn_closing, "_closing")) {
        PyErr_Clear();
        return -1;
    }
    for (k = 0; k < TCP_NMETHODS && !failed; k++) {
        PyObject *pure = PyDict_GetItemString((PyObject *)pures, tcp_method_defs[k].ml_name);
        if (!pure) {
            failed = 1;
            break;
        }
        tcp_method_defs[k].ml_doc = tcp_doc(signatures[k], pure);
        descrs[k] = PyDescr_NewMethod(tp, &tcp_method_defs[k]);
        failed = !descrs[k];
    }
    for (k = 0; k < TCP_NMETHODS && !failed; k++)
        failed = PyDict_SetItemString((PyObject *)into, tcp_method_defs[k].ml_name, descrs[k]) < 0;
    if (!failed) {
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
