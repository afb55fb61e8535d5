/* The TCP transport's Protocol reads and the multiplexer's dispatch, as C callables.
 *
 * Per readiness event of an 11-byte read, the Python path ran the multiplexer's _dispatch
 * (epoll.poll and its list of tuples), on_readiness, _read_data_ready (range(), recv_into, an
 * mmap slice) and released and re-took the GIL around epoll_wait and recv: ~12k user
 * instructions of an 11-byte ping-pong's 16.5k on uvloop, where uvloop's own transport spends
 * 4.4k on all of it (callgrind, CPython 3.11; the GIL hand-offs alone ~3.5k).
 *
 * Reader(transport, fallback) is the transport's on_readiness: an event that is readable and
 * nothing else, for a Protocol (transport._plain_reads), is read here with the steps and checks
 * of streamread.StreamReading._read_data_ready, reading the same attributes; every other
 * event, and everything but the common outcome (EOF, a socket error, a data_received that
 * raised, a switch to a BufferedProtocol), goes to the transport's Python methods.
 *
 * Dispatcher(epfd, callbacks, on_error) is what the multiplexer registers with
 * loop.add_reader for its private epoll: epoll_wait(0) and, per event, the callback of the
 * fd from the multiplexer's own dict (a Reader called directly); a callback that raised is
 * given to on_error(fd, exc) (SystemExit and KeyboardInterrupt propagate, as in Python).
 *
 * Both keep the GIL across their system calls (non-blocking, as the rest of the core:
 * _core_nogil.h), so the thread's read buffer is only in use between a recv and its copy.
 */

#include <structmember.h>
#include <sys/epoll.h>

#define RECV_MAX_EVENTS 256   /* as readiness._MAX_EVENTS */
#define RECV_READS_PER_EVENT 16 /* as streamread._READS_PER_EVENT */
#define RECV_LARGE_READ_DIVISOR 4 /* a read of read_size / 4 or more predicts a large one (read_once) */
#define RECV_LARGE_READ_BYTES (16 * 1024) /* ... and so does one of 16 KiB, for larger read sizes */

/* PEP 509's dict version (CPython 3.6-3.11; deprecated from 3.12): where it exists, a Reader
 * remembers the version of the transport's instance dict at which it last saw a Protocol
 * reading (_plain_reads and _reading true, _eof_received and _closing false) and the protocol
 * it delivered to. An unchanged version means no attribute of the transport was set since,
 * so none of those five lookups is repeated: they were ~660 of 4.5k instructions per 11-byte
 * read on uvloop (callgrind, tools/instructions_tcpread.py). Elsewhere each event looks them
 * up, as before. */
#if PY_VERSION_HEX < 0x030C0000
#define RECV_DICT_VERSION 1
#define recv_dict_version(d) (((PyDictObject *)(d))->ma_version_tag)
#else
#define RECV_DICT_VERSION 0
#define recv_dict_version(d) ((uint64_t)0)
#endif

static PyObject *rs_plain_reads, *rs_reading, *rs_eof_received, *rs_closing, *rs_sock, *rs_protocol, *rs_data_received, *rs_fatal_error, *rs_on_end_of_data,
    *rs_read_ready, *rs_take_read_buffer, *rs_read_error_msg, *rs_data_received_msg, *rs_write_ready;
static PyTypeObject *recv_reader_type;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *transport;
    PyObject *fallback; /* the class's on_readiness function: fallback(transport, events) */
    PyObject *protocol, *data_received; /* the protocol last delivered to, and its method */
    int fd;
    int has_buf;
    int last_large; /* the last read brought large_at bytes or more (a stream) */
    Py_ssize_t large_at; /* large_read_at(the read size), set with the buffer */
    Py_buffer buf; /* the thread's read buffer (transport._take_read_buffer()), once taken */
    long long fast_reads; /* reads made here (tests and stats tell the paths apart by it) */
    long long fresh_reads; /* of which straight into a new bytes object */
    long long slow_starts; /* new bytes objects not read into: their data began at a slow offset */
    long long copied_bytes; /* bytes copied out of the thread's buffer into a new bytes */
    PyObject *seen_dict; /* the instance dict the state was last read from (only compared) */
    uint64_t seen_version; /* its version then (RECV_DICT_VERSION), valid while seen_dict */
    long long state_reuses; /* events that reused the remembered state */
} zc_reader;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int epfd; /* -1 once closed: a later call does nothing */
    PyObject *callbacks; /* the multiplexer's fd -> callback dict */
    PyObject *on_error; /* on_error(fd, exc) */
    long long dispatches;
} zc_dispatcher;

/* The transport's state attribute <name>, a new reference: from its instance dict (about
 * half of what PyObject_GetAttr costs, measured), else through getattr (a class default).
 * The names are plain attributes, never data descriptors (streamread checks that once per
 * class before it makes a Reader), so the two agree. */
static unsigned long class_lookups; /* state() that fell back to getattr (under the GIL) */

static PyObject *state(PyObject *dict, PyObject *t, PyObject *name) {
    PyObject *value = PyDict_GetItemWithError(dict, name);
    if (value) {
        Py_INCREF(value);
        return value;
    }
    if (PyErr_Occurred()) return NULL;
    class_lookups++;
    return PyObject_GetAttr(t, name);
}

/* The state read at `version` of `dict` (with `lookups` = class_lookups before) holds until
 * the dict changes: remembered after lookups that found a reading Protocol, none of it a
 * class default (a class attribute is not covered by the instance dict's version). */
static void remember_state(zc_reader *r, PyObject *dict, uint64_t version, unsigned long lookups) {
    if (!RECV_DICT_VERSION || class_lookups != lookups || recv_dict_version(dict) != version) {
        r->seen_dict = NULL;
        return;
    }
    r->seen_dict = dict;
    r->seen_version = version;
}

static int state_unchanged(zc_reader *r, PyObject *dict) {
    return RECV_DICT_VERSION && r->seen_dict == dict && recv_dict_version(dict) == r->seen_version;
}

static int state_true(PyObject *dict, PyObject *t, PyObject *name) {
    PyObject *value = state(dict, t, name);
    int r;
    if (!value) return -1;
    r = value == Py_True ? 1 : value == Py_False ? 0 : PyObject_IsTrue(value);
    Py_DECREF(value);
    return r;
}

/* The exception being raised, taken (normalized, with its traceback). */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static int exiting_exception(void) {
    return PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* transport.<method>(*args); 0, or -1 with the exception set. */
static int call_transport(zc_reader *r, PyObject *method, PyObject *a, PyObject *b) {
    PyObject *args[3] = {r->transport, a, b}, *res;
    size_t n = a ? (b ? 3 : 2) : 1;
    res = PyObject_VectorcallMethod(method, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!res) return -1;
    Py_DECREF(res);
    return 0;
}

/* transport._fatal_error(<the exception being raised>, message). */
static int fatal_error(zc_reader *r, PyObject *message) {
    PyObject *exc = take_exception();
    int rc;
    if (!exc) return 0;
    rc = call_transport(r, rs_fatal_error, exc, message);
    Py_DECREF(exc);
    return rc;
}

/* Whether _read_data_ready reads at all: reading, and not at EOF or closing. (Not
 * _rx_blocked: only zero-copy receive sets it, and such a transport gets no Reader.) */
static int reads_now(PyObject *dict, PyObject *t) {
    int v = state_true(dict, t, rs_reading);
    if (v <= 0) return v;
    if ((v = state_true(dict, t, rs_eof_received)) != 0) return v < 0 ? -1 : 0;
    if ((v = state_true(dict, t, rs_closing)) != 0) return v < 0 ? -1 : 0;
    return 1;
}

/* After a read that filled the buffer: read again (1), stop (0) or -1, as _read_data_ready. */
static int reads_again(zc_reader *r, PyObject *dict) {
    PyObject *sock;
    int v = state_true(dict, r->transport, rs_reading);
    if (v <= 0) return v;
    if ((v = state_true(dict, r->transport, rs_closing)) != 0) return v < 0 ? -1 : 0;
    sock = state(dict, r->transport, rs_sock);
    if (!sock) return -1;
    Py_DECREF(sock);
    if (sock == Py_None) return 0;
    if ((v = state_true(dict, r->transport, rs_plain_reads)) < 0) return -1;
    if (!v) { /* set_protocol() to a BufferedProtocol: the general path goes on */
        PyObject *zero = PyLong_FromLong(0);
        if (!zero) return -1;
        v = call_transport(r, rs_read_ready, zero, NULL);
        Py_DECREF(zero);
        return v < 0 ? -1 : 0;
    }
    return 1;
}

/* What read size makes the next read go straight into a new bytes (read_once): a quarter of
 * the read size, at most 16 KiB. Copying what came out of the thread's buffer costs per byte;
 * a new bytes of the read size, cut to what came, costs the same whatever came (a malloc and a
 * realloc that shrinks it in place), so above a few KiB the copy is the dearer. With a
 * quarter of 256 KiB, the reads that followed a 16-64 KiB one (a receiver keeping up with its
 * sender, waking per 1-4 segments) went through the buffer: 17-28% of a 1 GiB loopback
 * stream's bytes copied in user space on asyncio (copied_bytes), where stock asyncio's recv
 * copies none. */
static Py_ssize_t large_read_at(Py_ssize_t read_size) {
    Py_ssize_t quarter = read_size / RECV_LARGE_READ_DIVISOR;
    return quarter < RECV_LARGE_READ_BYTES ? quarter : RECV_LARGE_READ_BYTES;
}

/* glibc serves a malloc of 128 KiB or more from mmap until a chunk larger than that was freed
 * (its dynamic threshold then rises to that chunk's size): until then each new bytes of the
 * read size costs mmap, a page fault, mremap (cut to what came) and munmap, as every
 * sock.recv(262144) does in a process that only imported asyncio (strace). A process whose
 * reads never fill the read size never frees such a chunk. Freeing one block of the read size
 * once sets the threshold where the first full read's bytes would have; where it stands
 * higher already (or was set by mallopt/MALLOC_MMAP_THRESHOLD_) this changes nothing. */
static void raise_mmap_threshold(size_t read_size) {
#ifdef __GLIBC__
    static size_t raised; /* under the GIL */
    void *volatile block; /* (volatile: a malloc freed unused may be optimised away) */
    if (read_size <= raised) return;
    block = malloc(read_size + 4096); /* a page more than a bytes of the read size */
    free(block);
    raised = read_size;
#else
    (void)read_size;
#endif
}

static int take_buffer(zc_reader *r) {
    PyObject *args[1] = {r->transport};
    PyObject *buf = PyObject_VectorcallMethod(rs_take_read_buffer, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    int rc;
    if (!buf) return -1;
    rc = PyObject_GetBuffer(buf, &r->buf, PyBUF_WRITABLE);
    Py_DECREF(buf);
    if (rc < 0) return -1;
    if (r->buf.len < 1) {
        PyBuffer_Release(&r->buf);
        PyErr_SetString(PyExc_ValueError, "the transport's read buffer is empty");
        return -1;
    }
    r->has_buf = 1;
    r->large_at = large_read_at(r->buf.len);
    raise_mmap_threshold((size_t)r->buf.len);
    return 0;
}

/* protocol.data_received, bound once per protocol: set_protocol() is seen (the protocol
 * is read from the transport per delivery), rebinding data_received on the same protocol
 * object is not, as on uvloop (which binds it in set_protocol). A new reference. */
static PyObject *data_received_of(zc_reader *r, PyObject *protocol) {
    if (protocol != r->protocol) {
        PyObject *bound = PyObject_GetAttr(protocol, rs_data_received);
        if (!bound) return NULL;
        Py_INCREF(protocol);
        Py_XSETREF(r->protocol, protocol);
        Py_XSETREF(r->data_received, bound);
    }
    Py_INCREF(r->data_received);
    return r->data_received;
}

/* What an event knows of the transport's state before it reads. */
typedef struct {
    uint64_t version; /* the instance dict's at the event's start */
    unsigned long lookups; /* class_lookups then */
    int known; /* the remembered state holds (state_unchanged): no lookups */
} read_state;

/* One delivery of `data` (a reference taken) to protocol.data_received; 0, 1 (it raised
 * and the transport was told) or -1 (an exception to propagate). */
static int deliver(zc_reader *r, PyObject *dict, PyObject *data, read_state *st) {
    PyObject *protocol, *method, *res;
    if (st->known) {
        method = r->data_received;
        Py_INCREF(method);
        st->known = 0; /* data_received may change anything: the next read looks again */
    } else {
        protocol = state(dict, r->transport, rs_protocol);
        method = protocol ? data_received_of(r, protocol) : NULL;
        Py_XDECREF(protocol);
        if (!method) {
            Py_DECREF(data);
            return -1;
        }
        remember_state(r, dict, st->version, st->lookups);
    }
    res = PyObject_CallOneArg(method, data);
    Py_DECREF(method);
    Py_DECREF(data);
    if (res) {
        Py_DECREF(res);
        return 0;
    }
    if (exiting_exception()) return -1;
    return fatal_error(r, rs_data_received_msg) < 0 ? -1 : 1;
}

/* Page offsets 1-31 make the kernel's copy into a buffer 1.8-2.9x slower (bench recv,
 * buffers.py); a bytes object's data starts 32 bytes into a 16-aligned block. */
static int slow_start(const char *p) {
    uintptr_t offset = (uintptr_t)p & 4095;
    return offset >= 1 && offset <= 31;
}

/* One recv. `fresh`: the last read was large (in this event or the one before), so this one
 * likely is too: it goes straight into a new bytes object of the read size (cut to what
 * came), which data_received gets as it is; otherwise into the thread's buffer, copied into a
 * bytes of what came (a small read costs a small copy, never a large block). "Large" is
 * large_read_at (16 KiB of a 256 KiB read size), not a full read: a receiver that keeps up
 * with its sender reads less than 256 KiB per event (139 of 279 reads of a 50 MiB loopback
 * stream were 180-250 KiB), and with "full" each such event's read went through the buffer
 * and a copy in user space (__memmove_avx_unaligned_erms 6-10% of the receiver's perf
 * samples, bench recv). Stock asyncio reads every recv into a new 256 KiB bytes. Returns what recv did (-1: errno)
 * with *data set when it read something, or -2 with a Python exception. */
static Py_ssize_t read_once(zc_reader *r, int fresh, PyObject **data) {
    PyObject *obj = NULL;
    char *into = r->buf.buf;
    Py_ssize_t n;
    int err;
    if (fresh) {
        obj = PyBytes_FromStringAndSize(NULL, r->buf.len);
        if (!obj) return -2;
        if (slow_start(PyBytes_AS_STRING(obj))) {
            r->slow_starts++;
            Py_CLEAR(obj); /* the buffer, this once */
        } else {
            into = PyBytes_AS_STRING(obj);
        }
    }
    n = recv(r->fd, into, (size_t)r->buf.len, 0);
    err = errno;
    if (n <= 0) {
        Py_XDECREF(obj);
        errno = err;
        return n;
    }
    r->fast_reads++;
    r->last_large = n >= r->large_at;
    if (obj) {
        r->fresh_reads++;
        if (n < r->buf.len && _PyBytes_Resize(&obj, n) < 0) return -2;
    } else if (!(obj = PyBytes_FromStringAndSize(r->buf.buf, n))) {
        return -2;
    } else {
        r->copied_bytes += n;
    }
    *data = obj;
    return n;
}

/* streamread.StreamReading._read_data_ready; 0, or -1 with an exception to propagate. */
static int reader_read(zc_reader *r, PyObject *dict, read_state *st) {
    int v = st->known ? 1 : reads_now(dict, r->transport), k;
    PyObject *data = NULL;
    Py_ssize_t n;
    if (v <= 0) return v;
    if (!r->has_buf && take_buffer(r) < 0) return -1;
    for (k = 0; k < RECV_READS_PER_EVENT; k++) {
        n = read_once(r, k > 0 || r->last_large, &data); /* after the first, each follows a full one */
        if (n == -2) return -1;
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return -1; /* as recv_into: PEP 475 */
                k--;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            PyErr_SetFromErrno(PyExc_OSError);
            return fatal_error(r, rs_read_error_msg);
        }
        if (n == 0) {
            r->fast_reads++;
            return call_transport(r, rs_on_end_of_data, NULL, NULL);
        }
        if ((v = deliver(r, dict, data, st)) != 0) return v < 0 ? -1 : 0;
        if (n < r->buf.len) return 0;
        if ((v = reads_again(r, dict)) <= 0) return v;
    }
    return 0;
}

static PyObject *reader_event(zc_reader *r, long events) {
    PyObject *args[2], *ev, *res, *dict;
    int plain;
    if (!r->transport) Py_RETURN_NONE; /* cleared by the collector */
    if (events == EPOLLIN) {
        dict = PyObject_GenericGetDict(r->transport, NULL);
        if (!dict) return NULL;
        read_state st = {recv_dict_version(dict), class_lookups, state_unchanged(r, dict)};
        if (st.known) {
            r->state_reuses++;
            plain = 1;
        } else {
            plain = state_true(dict, r->transport, rs_plain_reads);
        }
        if (plain > 0) plain = reader_read(r, dict, &st) < 0 ? -1 : 1;
        Py_DECREF(dict);
        if (plain < 0) return NULL;
        if (plain) Py_RETURN_NONE;
    }
    if (events == EPOLLOUT) {
        /* Writable alone: what _on_readiness -> the base's on_readiness do for it, `if
         * self._sock is not None: self._write_ready()`, without their two frames and the
         * super() call (~2.5k user instructions per writable event, a paced writer's flush). */
        PyObject *sock;
        if (!(dict = PyObject_GenericGetDict(r->transport, NULL))) return NULL;
        sock = state(dict, r->transport, rs_sock);
        Py_DECREF(dict);
        if (!sock) return NULL;
        Py_DECREF(sock);
        if (sock == Py_None) Py_RETURN_NONE;
        if (call_transport(r, rs_write_ready, NULL, NULL) < 0) return NULL;
        Py_RETURN_NONE;
    }
    ev = PyLong_FromLong(events);
    if (!ev) return NULL;
    args[0] = r->transport;
    args[1] = ev;
    res = PyObject_Vectorcall(r->fallback, args, 2, NULL);
    Py_DECREF(ev);
    return res;
}

static PyObject *reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    long events;
    size_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "on_readiness(events=EPOLLIN)");
        return NULL;
    }
    /* Without an argument: readable (the loop's reader callback; uvloop runs a handle without
     * arguments through a plain vectorcall, one with them through a tuple). */
    if (!nargs) return reader_event((zc_reader *)self, EPOLLIN);
    events = PyLong_AsLong(args[0]);
    if (events == -1 && PyErr_Occurred()) return NULL;
    return reader_event((zc_reader *)self, events);
}

static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *transport, *fallback;
    int fd;
    zc_reader *r;
    if ((kwds && PyDict_GET_SIZE(kwds)) || !PyArg_ParseTuple(args, "OOi:Reader", &transport, &fallback, &fd))
        return NULL;
    r = (zc_reader *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->vectorcall = reader_vectorcall;
    Py_INCREF(transport);
    Py_INCREF(fallback);
    r->transport = transport;
    r->fallback = fallback;
    r->fd = fd;
    return (PyObject *)r;
}

static int reader_traverse(PyObject *self, visitproc visit, void *arg) {
    zc_reader *r = (zc_reader *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(r->transport);
    Py_VISIT(r->fallback);
    Py_VISIT(r->protocol);
    Py_VISIT(r->data_received);
    if (r->has_buf) Py_VISIT(r->buf.obj);
    return 0;
}

static int reader_clear(PyObject *self) {
    zc_reader *r = (zc_reader *)self;
    Py_CLEAR(r->transport);
    Py_CLEAR(r->fallback);
    Py_CLEAR(r->protocol);
    Py_CLEAR(r->data_received);
    if (r->has_buf) {
        r->has_buf = 0;
        PyBuffer_Release(&r->buf);
    }
    return 0;
}

static void reader_dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyObject *reader_get_fast_reads(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_reader *)self)->fast_reads);
}

/* Names its transport: asyncio's handler and debug messages show a callback by its repr. */
static PyObject *reader_repr(PyObject *self) {
    zc_reader *r = (zc_reader *)self;
    if (!r->transport) return PyUnicode_FromString("<aiozc Reader (cleared)>");
    return PyUnicode_FromFormat("<aiozc Reader of %R>", r->transport);
}

static PyMemberDef reader_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(zc_reader, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *reader_get_fresh_reads(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_reader *)self)->fresh_reads);
}

static PyObject *reader_get_slow_starts(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_reader *)self)->slow_starts);
}

static PyObject *reader_get_copied_bytes(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_reader *)self)->copied_bytes);
}

static PyObject *reader_get_state_reuses(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_reader *)self)->state_reuses);
}

static PyGetSetDef reader_getset[] = {
    {"fast_reads", reader_get_fast_reads, NULL, "recv calls made by the compiled path", NULL},
    {"fresh_reads", reader_get_fresh_reads, NULL, "of which straight into a new bytes", NULL},
    {"slow_starts", reader_get_slow_starts, NULL, "new bytes at a slow page offset (not read into)", NULL},
    {"copied_bytes", reader_get_copied_bytes, NULL, "bytes copied out of the thread's read buffer", NULL},
    {"state_reuses", reader_get_state_reuses, NULL, "events that reused the remembered transport state", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot reader_slots[] = {
    {Py_tp_new, reader_new},
    {Py_tp_dealloc, reader_dealloc},
    {Py_tp_traverse, reader_traverse},
    {Py_tp_clear, reader_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, reader_repr},
    {Py_tp_members, reader_members},
    {Py_tp_getset, reader_getset},
    {Py_tp_doc, "Reader(transport, fallback, fd): a TCP transport's on_readiness(events=EPOLLIN) (aiozc/_sys/_core_recv.c)."},
    {0, NULL},
};

static PyType_Spec reader_spec = {
    "aiozc._sys._core.Reader", sizeof(zc_reader), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, reader_slots,
};

