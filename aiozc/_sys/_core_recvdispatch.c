/* The multiplexer's dispatch (Dispatcher) and the export of Reader and Dispatcher.
 *
 * Split out of _core_recv.c, which it follows in the one translation unit the core is built
 * from (C_SOURCES order): the zc_dispatcher struct, the interned names and recv_reader_type
 * are declared there. What Dispatcher does and why is in _core_recv.c's opening comment.
 */

static int dispatch_one(zc_dispatcher *d, int fd, uint32_t events) {
    PyObject *key = PyLong_FromLong(fd), *cb, *res, *ev, *exc, *args[2];
    if (!key) return -1;
    cb = PyDict_GetItemWithError(d->callbacks, key); /* borrowed */
    if (!cb) {
        Py_DECREF(key);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(cb); /* the callback may unregister itself */
    if (Py_TYPE(cb) == recv_reader_type) {
        res = reader_event((zc_reader *)cb, (long)events);
    } else {
        ev = PyLong_FromUnsignedLong(events);
        res = ev ? PyObject_CallOneArg(cb, ev) : NULL;
        Py_XDECREF(ev);
    }
    Py_DECREF(cb);
    if (res) {
        Py_DECREF(res);
        Py_DECREF(key);
        return 0;
    }
    if (exiting_exception()) {
        Py_DECREF(key);
        return -1;
    }
    exc = take_exception();
    args[0] = key;
    args[1] = exc;
    res = PyObject_Vectorcall(d->on_error, args, 2, NULL);
    Py_DECREF(key);
    Py_XDECREF(exc);
    if (!res) return -1;
    Py_DECREF(res);
    return 0;
}

static PyObject *dispatcher_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    zc_dispatcher *d = (zc_dispatcher *)self;
    struct epoll_event events[RECV_MAX_EVENTS]; /* per call: a callback may let another thread dispatch */
    int n, k;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "dispatch() takes no arguments");
        return NULL;
    }
    if (d->epfd < 0) Py_RETURN_NONE;
    d->dispatches++;
    n = epoll_wait(d->epfd, events, RECV_MAX_EVENTS, 0);
    if (n < 0) {
        if (errno == EINTR) Py_RETURN_NONE; /* level-triggered: the loop calls again */
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (k = 0; k < n; k++) {
        if (dispatch_one(d, events[k].data.fd, events[k].events) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *dispatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *callbacks, *on_error;
    int epfd;
    zc_dispatcher *d;
    if ((kwds && PyDict_GET_SIZE(kwds)) ||
        !PyArg_ParseTuple(args, "iO!O:Dispatcher", &epfd, &PyDict_Type, &callbacks, &on_error))
        return NULL;
    d = (zc_dispatcher *)type->tp_alloc(type, 0);
    if (!d) return NULL;
    d->vectorcall = dispatcher_vectorcall;
    d->epfd = epfd;
    Py_INCREF(callbacks);
    Py_INCREF(on_error);
    d->callbacks = callbacks;
    d->on_error = on_error;
    return (PyObject *)d;
}

/* close(): forget the epoll fd (its owner closes it; the number may be reused). */
static PyObject *dispatcher_close(PyObject *self, PyObject *unused) {
    ((zc_dispatcher *)self)->epfd = -1;
    Py_RETURN_NONE;
}

static int dispatcher_traverse(PyObject *self, visitproc visit, void *arg) {
    zc_dispatcher *d = (zc_dispatcher *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(d->callbacks);
    Py_VISIT(d->on_error);
    return 0;
}

static int dispatcher_clear(PyObject *self) {
    zc_dispatcher *d = (zc_dispatcher *)self;
    d->epfd = -1;
    Py_CLEAR(d->callbacks);
    Py_CLEAR(d->on_error);
    return 0;
}

static void dispatcher_dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    dispatcher_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyObject *dispatcher_get_dispatches(PyObject *self, void *closure) {
    return PyLong_FromLongLong(((zc_dispatcher *)self)->dispatches);
}

static PyObject *dispatcher_repr(PyObject *self) {
    return PyUnicode_FromFormat("<aiozc Dispatcher epfd=%d>", ((zc_dispatcher *)self)->epfd);
}

static PyMethodDef dispatcher_methods[] = {
    {"close", dispatcher_close, METH_NOARGS, "close(): dispatch nothing from now on"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef dispatcher_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(zc_dispatcher, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef dispatcher_getset[] = {
    {"dispatches", dispatcher_get_dispatches, NULL, "calls that polled the epoll", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot dispatcher_slots[] = {
    {Py_tp_new, dispatcher_new},
    {Py_tp_dealloc, dispatcher_dealloc},
    {Py_tp_traverse, dispatcher_traverse},
    {Py_tp_clear, dispatcher_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, dispatcher_repr},
    {Py_tp_methods, dispatcher_methods},
    {Py_tp_members, dispatcher_members},
    {Py_tp_getset, dispatcher_getset},
    {Py_tp_doc, "Dispatcher(epfd, callbacks, on_error): a multiplexer's loop reader (aiozc/_sys/_core_recv.c)."},
    {0, NULL},
};

static PyType_Spec dispatcher_spec = {
    "aiozc._sys._core.Dispatcher", sizeof(zc_dispatcher), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, dispatcher_slots,
};

static int intern_names(void) {
    struct { PyObject **slot; const char *text; } names[] = {
        {&rs_plain_reads, "_plain_reads"}, {&rs_reading, "_reading"},
        {&rs_eof_received, "_eof_received"}, {&rs_closing, "_closing"},
        {&rs_sock, "_sock"}, {&rs_protocol, "_protocol"},
        {&rs_data_received, "data_received"}, {&rs_fatal_error, "_fatal_error"},
        {&rs_on_end_of_data, "_on_end_of_data"}, {&rs_read_ready, "_read_ready"},
        {&rs_take_read_buffer, "_take_read_buffer"}, {&rs_write_ready, "_write_ready"},
        {&rs_read_error_msg, "Fatal read error on socket transport"},
        {&rs_data_received_msg, "Fatal error: protocol.data_received() call failed."},
    };
    size_t k;
    for (k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (!*names[k].slot && !(*names[k].slot = PyUnicode_InternFromString(names[k].text))) return -1;
    }
    return 0;
}

/* Put the Reader and Dispatcher types into the dict `into`. 0, or -1 (error cleared). */
int zc_recv_export(intptr_t into) {
    PyObject *reader = NULL, *dispatcher = NULL;
    int r = -1;
    if (intern_names() == 0 && (reader = PyType_FromSpec(&reader_spec)) &&
        (dispatcher = PyType_FromSpec(&dispatcher_spec)) &&
        PyDict_SetItemString((PyObject *)into, "Reader", reader) == 0 &&
        PyDict_SetItemString((PyObject *)into, "Dispatcher", dispatcher) == 0) {
        Py_XSETREF(recv_reader_type, (PyTypeObject *)reader); /* the dispatcher's fast check */
        Py_INCREF(reader);
        r = 0;
    }
    Py_XDECREF(reader);
    Py_XDECREF(dispatcher);
    if (r < 0) PyErr_Clear();
    return r;
}
