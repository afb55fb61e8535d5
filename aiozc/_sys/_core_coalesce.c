/* Coalescer: sendto_zc() under coalesce_zc=True as one CPython builtin per transport.
 *
 * aiozc/datagram/coalescing.py holds the pure-Python reference (PyCoalescer) and what runs
 * once per batch (the flush). Per datagram, the Python version cost ~3.4k user instructions
 * more than the per-call path it should undercut (callgrind, 64000 B into the ifb sink,
 * window of 256, uvloop: 8.9k against 5.5k), nearly all of it the interpreter running
 * transport.sendto_zc and _sendto_zc_coalesced (attribute loads and stores, two frames).
 * Here one call exports the buffer into the batch's PinSet, checks its size, makes the
 * future and files it; Python runs only once per batch: `schedule()` on its first datagram
 * (call_soon the flush; returns the room below the high-water mark), `flush()` when it
 * reaches `max_batch`, and `pause()` when the batch's bytes exceed the room.
 *
 * The transport binds `sendto_zc` (this type's method, bound to one instance) as its own
 * attribute, so `transport.sendto_zc(buf)` runs no Python frame at all. Whatever this cannot
 * decide (an address, keywords, a closing transport: `blocked`) goes to `fallback`, the
 * transport's non-coalesced path, with the same arguments.
 *
 * The instance refers back to the transport (its bound methods): a GC type, and the
 * transport clears it when it closes (coalescing._fail_coalesced).
 */

typedef struct {
    PyObject_HEAD
    zc_pinset *pins;          /* the waiting datagrams' exports */
    PyObject *objs, *futures; /* lists: the callers' objects, their futures */
    long long room;           /* bytes the batch may reach before pause() is asked */
    long long max_size;       /* the largest datagram (UDP's payload limit) */
    Py_ssize_t max_batch;     /* a batch this long is flushed at once */
    int blocked;
    PyObject *loop; /* None: the loop's futures are not plain asyncio futures */
    PyObject *future_type, *make_future;
    PyObject *no_args, *loop_kwargs; /* () and {"loop": loop}: Future(loop=loop), made once */
    PyObject *schedule, *flush, *pause, *fallback, *view_error;
    PyObject *debug;        /* what loop.get_debug() reads (as _core_pyhot.c's hot_debug), or NULL */
    Py_ssize_t loop_offset; /* where a Future keeps its loop (zc_future_loop_offset), or 0 */
    int debug_on, debug_age;
} zc_coalescer;

static PyTypeObject *co_pinset_type(zc_coalescer *c) { return c->pins ? Py_TYPE(c->pins) : NULL; }

static int co_traverse(PyObject *self, visitproc visit, void *arg) {
    zc_coalescer *c = (zc_coalescer *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(c->pins);
    Py_VISIT(c->objs);
    Py_VISIT(c->futures);
    Py_VISIT(c->loop);
    Py_VISIT(c->future_type);
    Py_VISIT(c->loop_kwargs);
    Py_VISIT(c->make_future);
    Py_VISIT(c->schedule);
    Py_VISIT(c->flush);
    Py_VISIT(c->pause);
    Py_VISIT(c->fallback);
    Py_VISIT(c->view_error);
    Py_VISIT(c->debug);
    return 0;
}

/* The callbacks (what refers back to the transport); the batch stays. */
static void co_drop_callbacks(zc_coalescer *c) {
    c->blocked = 1;
    Py_CLEAR(c->loop);
    Py_CLEAR(c->future_type);
    Py_CLEAR(c->no_args);
    Py_CLEAR(c->loop_kwargs);
    Py_CLEAR(c->make_future);
    Py_CLEAR(c->schedule);
    Py_CLEAR(c->flush);
    Py_CLEAR(c->pause);
    Py_CLEAR(c->fallback);
    Py_CLEAR(c->view_error);
    Py_CLEAR(c->debug);
    c->loop_offset = 0;
}

static int co_clear(PyObject *self) {
    zc_coalescer *c = (zc_coalescer *)self;
    co_drop_callbacks(c);
    Py_CLEAR(c->pins);
    Py_CLEAR(c->objs);
    Py_CLEAR(c->futures);
    return 0;
}

static void co_dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    co_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

/* Coalescer(pinset_type, loop, future_type, make_future, schedule, flush, pause, fallback,
 *           view_error, max_size, max_batch[, debug, loop_offset]): with `debug` (what the
 *           loop's get_debug() reads, hot.py's _debug_source) and `loop_offset` (hot.py's
 *           _future_loop_offset()) the futures skip Future.__init__ outside debug mode. */
static PyObject *co_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *pinset_type, *loop, *future_type, *make_future, *schedule, *flush;
    PyObject *pause, *fallback, *view_error, *debug = Py_None;
    long long max_size;
    Py_ssize_t max_batch, loop_offset = 0;
    zc_coalescer *c;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Coalescer() takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLn|On", &pinset_type, &loop, &future_type, &make_future,
                          &schedule, &flush, &pause, &fallback, &view_error, &max_size, &max_batch,
                          &debug, &loop_offset))
        return NULL;
    if (!PyType_Check(pinset_type) || max_batch < 1) {
        PyErr_SetString(PyExc_TypeError, "Coalescer(): a PinSet type and max_batch >= 1");
        return NULL;
    }
    c = (zc_coalescer *)type->tp_alloc(type, 0);
    if (!c) return NULL;
    c->pins = (zc_pinset *)((PyTypeObject *)pinset_type)->tp_alloc((PyTypeObject *)pinset_type, 0);
    c->objs = PyList_New(0);
    c->futures = PyList_New(0);
    c->no_args = PyTuple_New(0);
    c->loop_kwargs = PyDict_New();
    if (!c->pins || !c->objs || !c->futures || !c->no_args || !c->loop_kwargs ||
        PyDict_SetItemString(c->loop_kwargs, "loop", loop) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    c->max_size = max_size;
    c->max_batch = max_batch;
#define CO_SET(field) (c->field = field, Py_INCREF(field))
    CO_SET(loop);
    CO_SET(future_type);
    CO_SET(make_future);
    CO_SET(schedule);
    CO_SET(flush);
    CO_SET(pause);
    CO_SET(fallback);
    CO_SET(view_error);
#undef CO_SET
    if (debug != Py_None && loop != Py_None && loop_offset > 0) {
        c->debug = debug;
        Py_INCREF(debug);
        c->loop_offset = loop_offset;
        c->debug_age = DEBUG_EVERY; /* read at the first future */
    }
    return (PyObject *)c;
}

/* What loop.create_future() makes: Future(loop=loop) with the keyword dict made once where
 * the loop's futures are plain (see _core_pyhot.c: not Future(), whose running-loop lookup
 * is a getpid() system call on CPython 3.11), else make_future(). A new reference, or NULL. */
static PyObject *co_future(zc_coalescer *c) {
    PyTypeObject *type;
    PyObject *future;
    int debug;
    if (c->loop == Py_None) return PyObject_CallNoArgs(c->make_future);
    if (!c->loop_offset) return PyObject_Call(c->future_type, c->no_args, c->loop_kwargs);
    /* Outside debug mode all Future.__init__ does is store the loop, after parsing the keyword
     * dict and calling get_debug() (a Python method on asyncio's loop): ~1.0k of the ~4.6k
     * instructions per coalesced datagram there. As hot_future (_core_pyhot.c), whose layout
     * check zc_future_loop_offset made and whose get_debug() reads this repeats. */
    if (c->debug_age++ < DEBUG_EVERY) {
        debug = c->debug_on;
    } else {
        PyObject *r = PyUnicode_Check(c->debug) ? PyObject_GetAttr(c->loop, c->debug)
                                                : PyObject_CallNoArgs(c->debug);
        if (!r) return NULL;
        debug = r == Py_False ? 0 : r == Py_True ? 1 : PyObject_IsTrue(r);
        Py_DECREF(r);
        if (debug < 0) return NULL;
        c->debug_on = debug;
        c->debug_age = 1;
    }
    if (debug) return PyObject_Call(c->future_type, c->no_args, c->loop_kwargs); /* traceback */
    type = (PyTypeObject *)c->future_type;
    future = type->tp_new(type, c->no_args, NULL);
    if (!future) return NULL;
    Py_INCREF(c->loop);
    *(PyObject **)((char *)future + c->loop_offset) = c->loop;
    return future;
}

/* The export just added is refused or undone. */
static void co_unpush(zc_pinset *p) {
    p->n--;
    PyBuffer_Release(&p->views[p->n]);
    pins_recount(p);
}

/* No export: raise what sendto_zc() raises for this buffer (byte_view's message). */
static PyObject *co_buffer_error(zc_coalescer *c, PyObject *buf) {
    PyObject *type, *value, *tb, *view;
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_BufferError))
        return NULL;
    PyErr_Fetch(&type, &value, &tb);
    view = PyObject_CallOneArg(c->view_error, buf);
    if (!view) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(view); /* it did not raise: the export's own error stands */
    PyErr_Restore(type, value, tb);
    return NULL;
}

/* Call a once-per-batch callback that returns the new room (schedule, pause). */
static int co_set_room(zc_coalescer *c, PyObject *fn) {
    PyObject *r = PyObject_CallNoArgs(fn);
    long long room;
    if (!r) return -1;
    room = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (room == -1 && PyErr_Occurred()) return -1;
    c->room = room;
    return 0;
}

/* sendto_zc(buf, addr=None) -> Future: see the top of this file. */
static PyObject *co_sendto_zc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    zc_coalescer *c = (zc_coalescer *)self;
    Py_ssize_t len;
    zc_pinset *p = c->pins;
    PyObject *buf, *future, *r;
    if (c->blocked || !p || kwnames || nargs < 1 || nargs > 2 || (nargs == 2 && args[1] != Py_None)) {
        if (!c->fallback) {
            PyErr_SetString(PyExc_RuntimeError, "sendto_zc() of a closed coalescer");
            return NULL;
        }
        return PyObject_Vectorcall(c->fallback, args, (size_t)nargs, kwnames);
    }
    buf = args[0];
    len = pins_push(p, buf);
    if (len < 0) return co_buffer_error(c, buf);
    if (len > c->max_size) {
        co_unpush(p);
        PyErr_Format(PyExc_ValueError, "datagram of %zd bytes exceeds the %lld-byte UDP payload limit",
                     len, c->max_size);
        return NULL;
    }
    future = co_future(c);
    if (!future) {
        co_unpush(p);
        return NULL;
    }
    if (PyList_Append(c->objs, buf) < 0) {
        co_unpush(p);
        Py_DECREF(future);
        return NULL;
    }
    if (PyList_Append(c->futures, future) < 0) {
        co_unpush(p);
        PySequence_DelItem(c->objs, -1);
        Py_DECREF(future);
        return NULL;
    }
    /* The datagram is in the batch from here on: an error below is raised after it. */
    if (p->n == 1) {
        if (co_set_room(c, c->schedule) < 0) goto failed;
    } else if (p->n >= c->max_batch) {
        r = PyObject_CallNoArgs(c->flush);
        if (!r) goto failed;
        Py_DECREF(r);
    }
    if (c->pins && c->pins->nbytes > c->room && co_set_room(c, c->pause) < 0) goto failed;
    return future;
failed:
    Py_DECREF(future);
    return NULL;
}

/* take() -> (objs, pins, futures): the waiting batch; the coalescer starts an empty one. */
static PyObject *co_take(PyObject *self, PyObject *unused) {
    zc_coalescer *c = (zc_coalescer *)self;
    PyTypeObject *pinset_type = co_pinset_type(c);
    PyObject *pins, *objs, *futures, *batch;
    if (!pinset_type) {
        PyErr_SetString(PyExc_RuntimeError, "take() of a cleared coalescer");
        return NULL;
    }
    pins = pinset_type->tp_alloc(pinset_type, 0);
    objs = PyList_New(0);
    futures = PyList_New(0);
    /* the next batch is likely as long as this one: its views in one allocation */
    if (!pins || !objs || !futures || pins_reserve((zc_pinset *)pins, c->pins->n) < 0) {
        Py_XDECREF(pins);
        Py_XDECREF(objs);
        Py_XDECREF(futures);
        return NULL;
    }
    batch = PyTuple_Pack(3, c->objs, (PyObject *)c->pins, c->futures);
    if (!batch) {
        Py_DECREF(pins);
        Py_DECREF(objs);
        Py_DECREF(futures);
        return NULL;
    }
    Py_SETREF(c->objs, objs);
    Py_SETREF(c->futures, futures);
    Py_SETREF(c->pins, (zc_pinset *)pins);
    return batch;
}

/* close(): blocked for good, the callbacks dropped (they refer to the transport). */
static PyObject *co_close(PyObject *self, PyObject *unused) {
    co_drop_callbacks((zc_coalescer *)self);
    Py_RETURN_NONE;
}

static Py_ssize_t co_len(PyObject *self) {
    zc_coalescer *c = (zc_coalescer *)self;
    return c->pins ? c->pins->n : 0;
}

static PyObject *co_get_nbytes(PyObject *self, void *closure) {
    zc_coalescer *c = (zc_coalescer *)self;
    return PyLong_FromLongLong(c->pins ? c->pins->nbytes : 0);
}

static PyObject *co_get_room(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_coalescer *)self)->room);
}

static int co_set_room_attr(PyObject *self, PyObject *value, void *closure) {
    long long room = value ? PyLong_AsLongLong(value) : -1;
    if (room == -1 && PyErr_Occurred()) return -1;
    ((zc_coalescer *)self)->room = room;
    return 0;
}

static PyObject *co_get_blocked(PyObject *self, void *closure) {
    return PyBool_FromLong(((zc_coalescer *)self)->blocked);
}

static int co_set_blocked(PyObject *self, PyObject *value, void *closure) {
    zc_coalescer *c = (zc_coalescer *)self;
    int blocked = value ? PyObject_IsTrue(value) : 1;
    if (blocked < 0) return -1;
    c->blocked = blocked || !c->fallback; /* a closed one stays blocked */
    return 0;
}

static PyMethodDef co_methods[] = {
    {"sendto_zc", (PyCFunction)(void (*)(void))co_sendto_zc, METH_FASTCALL | METH_KEYWORDS,
     "sendto_zc(buf, addr=None) -> Future: the datagram joins this loop iteration's batch"},
    {"take", co_take, METH_NOARGS, "take() -> (objs, pins, futures) of the waiting batch"},
    {"close", co_close, METH_NOARGS, "close(): blocked for good, callbacks dropped"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef co_getset[] = {
    {"nbytes", co_get_nbytes, NULL, "bytes of the waiting datagrams", NULL},
    {"room", co_get_room, co_set_room_attr, "bytes the batch may reach before pause()", NULL},
    {"blocked", co_get_blocked, co_set_blocked, "every call goes to fallback", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot co_slots[] = {
    {Py_tp_new, co_new},
    {Py_tp_dealloc, co_dealloc},
    {Py_tp_traverse, co_traverse},
    {Py_tp_clear, co_clear},
    {Py_tp_methods, co_methods},
    {Py_tp_getset, co_getset},
    {Py_sq_length, co_len},
    {Py_tp_doc, "sendto_zc() under coalesce_zc=True (aiozc/_sys/_core_coalesce.c)."},
    {0, NULL},
};

static PyType_Spec co_spec = {"aiozc._sys._core.Coalescer", sizeof(zc_coalescer), 0,
                              Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, co_slots};

/* Put the PinSet and Coalescer types and set_results into the dict `into`; `invalid_state` is
 * asyncio.InvalidStateError, into["Future"] asyncio.Future (if given). 0, or -1 (error
 * cleared). */
int zc_pins_export(intptr_t into, intptr_t invalid_state) {
    PyObject *type = PyType_FromSpec(&pins_spec), *fn = NULL, *co_type = NULL;
    int r = -1;
    if (!pins_set_result_name) pins_set_result_name = PyUnicode_InternFromString("set_result");
    if (!pins_invalid_state) {
        pins_invalid_state = (PyObject *)invalid_state;
        Py_INCREF(pins_invalid_state);
    }
    if (!pins_future_type) {
        pins_future_type = PyDict_GetItemString((PyObject *)into, "Future"); /* borrowed */
        if (pins_future_type) {
            Py_INCREF(pins_future_type);
            pins_set_result = PyObject_GetAttr(pins_future_type, pins_set_result_name);
            if (!pins_set_result) PyErr_Clear(); /* then by name */
        }
    }
    if (type && pins_set_result_name) fn = PyCFunction_New(&pins_functions[0], NULL);
    if (fn) co_type = PyType_FromSpec(&co_spec);
    if (co_type && PyDict_SetItemString((PyObject *)into, "PinSet", type) == 0 &&
        PyDict_SetItemString((PyObject *)into, "Coalescer", co_type) == 0)
        r = PyDict_SetItemString((PyObject *)into, "set_results", fn);
    Py_XDECREF(type);
    Py_XDECREF(fn);
    Py_XDECREF(co_type);
    if (r < 0) PyErr_Clear();
    return r;
}
