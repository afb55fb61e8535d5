/* The datagram transport's sendto_zc / sendto as C methods of its class, and the drain results
 * they handle without Python; they call the builtins of _core_pyhot.c (one translation unit). */

/* transport.sendto_zc(buf) and transport.sendto(data) as C methods of the transport class.
 *
 * Called as `transport.sendto_zc(buf)` from a caller's loop, the Python method cost a frame,
 * its attribute reads and checks before it reached the builtin above (~0.35k instructions,
 * callgrind). These methods go to the builtin in the transport's `_hot_zc` / `_hot_send`
 * slot at once when it is ours and the call is the simple one (one positional argument; for
 * sendto, not a coalesce_zc transport); anything else, and whatever the builtin hands
 * back as an integer code, goes to the Python methods the class had (`pure`) and to
 * `_hot_zc_returned` / `_hot_sendto_result`, so the contract is the Python one. */

#include <structmember.h>

typedef struct {
    PyObject *pure;       /* the class's Python method */
    PyObject *returned;   /* interned name of the Python method taking (code, buf) */
    PyObject *more;       /* sendto_zc: interned "_hot_more", what a send's result flags ask */
    PyCFunction hot;      /* the builtin the slot must hold */
    Py_ssize_t fn_offset; /* offset of the slot holding the builtin (or None) */
    Py_ssize_t coalesce_offset; /* `_coalesce` (sendto: with coalesce_zc the Python method
                                 * sends a waiting batch first), or -1: not checked */
} zc_method;

static zc_method zc_methods[2]; /* sendto_zc, sendto */
static PyTypeObject *zc_methods_type; /* the class they were made for */

/* What the quick drain results below read of the transport (zc_dgram_methods fills it): the
 * class, its slots' offsets, the policy class and ZeroCopyState.ZEROCOPY, interned names. */
#define QUICK_METHODS 8
static const char *quick_method_names[QUICK_METHODS] = {
    "_hot_more", "_hot_drained", "_hot_resolve", "_maybe_pause_protocol", "_maybe_resume_protocol",
    "_call_protocol", "get_write_buffer_size", "_after_completions"};
static struct {
    PyObject *methods[QUICK_METHODS];
    PyTypeObject *type, *policy_type;
    PyObject *zerocopy;
    Py_ssize_t protocol, paused, conn_lost, closing, batching, policy, stats, tracker, low_water;
    PyObject *state, *streak, *probe, *handles, *pause_writing, *resume_writing, *failed, *others, *resume;
} quick;

static PyObject *call_pure(zc_method *m, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    PyObject *small[8], **stack = small, *r;
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (n + 1 > 8 && !(stack = PyMem_Malloc((size_t)(n + 1) * sizeof *stack))) return PyErr_NoMemory();
    stack[0] = self;
    memcpy(stack + 1, args, (size_t)n * sizeof *args);
    r = PyObject_Vectorcall(m->pure, stack, (size_t)nargs + 1, kwnames);
    if (stack != small) PyMem_Free(stack);
    return r;
}

static PyObject *slot_of(PyObject *self, Py_ssize_t offset) { return *(PyObject **)((char *)self + offset); }

/* The zc_hot capsule of the builtin in `m`'s slot, or NULL: not ours (None, unset), or a
 * coalesce_zc transport's sendto. */
static PyObject *method_hot(zc_method *m, PyObject *self) {
    PyObject *fn = slot_of(self, m->fn_offset);
    if (!fn || !PyCFunction_Check(fn) || PyCFunction_GET_FUNCTION(fn) != m->hot) return NULL;
    if (m->coalesce_offset >= 0 && slot_of(self, m->coalesce_offset) != Py_False) return NULL;
    return PyCFunction_GET_SELF(fn);
}

static PyObject *method_returned(zc_method *m, PyObject *self, PyObject *code, PyObject *buf) {
    PyObject *args[3] = {self, code, buf};
    return PyObject_VectorcallMethod(m->returned, args, 3, NULL);
}

/* protocol.<name>() as ZeroCopyTransportBase._call_protocol makes it: 1, or -1 with an
 * exception (SystemExit, KeyboardInterrupt, or one from the transport's
 * _hot_protocol_failed, which hands any other to the loop's exception handler). */
static int quick_call_protocol(PyObject *self, PyObject *name) {
    PyObject *r = PyObject_CallMethodNoArgs(slot_of(self, quick.protocol), name), *type, *exc, *tb, *args[3];
    if (r) {
        Py_DECREF(r);
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) return -1;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb && exc) PyException_SetTraceback(exc, tb);
    args[0] = self;
    args[1] = name;
    args[2] = exc ? exc : Py_None;
    r = PyObject_VectorcallMethod(quick.failed, args, 3, NULL);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    if (!r) return -1;
    Py_DECREF(r);
    return 1;
}

/* Set the bool slot `_protocol_paused`, and the C side's copy of it. */
static void quick_set_paused(PyObject *self, zc_hot *h, int paused) {
    PyObject **slot = (PyObject **)((char *)self + quick.paused), *old = *slot;
    *slot = paused ? Py_True : Py_False;
    Py_INCREF(*slot);
    Py_XDECREF(old);
    h->d->paused = paused;
}

/* A send's result flags are DG_F_PAUSE alone: what _hot_more -> _maybe_pause_protocol ->
 * _call_protocol do (7 Python calls per pause, ~11k instructions: once per drain cycle, the
 * pinned bytes of a window pass the high-water mark at its 2nd 64000 B datagram), where they
 * would do it: the protocol is not paused, the connection not lost, no batch under way.
 * get_write_buffer_size() is then the pinned bytes the C side compared with high_water: the
 * C path runs only with nothing queued and without coalesce_zc. 1 done, 0 for Python, -1. */
static int quick_pause(PyObject *self, zc_hot *h) {
    if (slot_of(self, quick.paused) != Py_False || slot_of(self, quick.conn_lost) != Py_False ||
        slot_of(self, quick.batching) != Py_False)
        return 0;
    quick_set_paused(self, h, 1);
    return quick_call_protocol(self, quick.pause_writing);
}

/* Is attribute `name` of `obj` the object `want` (or, want NULL, the int 0)? */
static int attr_is(PyObject *obj, PyObject *name, PyObject *want) {
    PyObject *v = PyObject_GetAttr(obj, name);
    int is;
    if (!v) {
        PyErr_Clear();
        return 0;
    }
    is = want ? v == want : PyLong_CheckExact(v) && PyLong_AsLongLong(v) == 0;
    Py_DECREF(v);
    return is;
}

/* The flags are DG_F_RESOLVED alone: what _hot_more -> _hot_drained -> _hot_resolve do when
 * nothing but the writes' futures and the protocol's resume_writing has to happen: the
 * policy is a ZeroCopyPolicy in its zerocopy state with no copied streak and no probe in
 * flight (on_completed(ids, copied=False) changes nothing then), the stats say zerocopy
 * (no _sync_state), the transport is not closing, and the writes share one Completion with
 * no open_write handle (resolve_alike's case). Read per drain, not per datagram. */
static int quick_resolved(PyObject *self, zc_hot *h, PyObject *capsule) {
    PyObject *policy = slot_of(self, quick.policy), *stats = slot_of(self, quick.stats), *handles, *done,
             *low, *r, *args[3];
    zc_tracker *t = h->d->t;
    long long low_water;
    int ok;
    if (!t->nout || !t->out_uniform || slot_of(self, quick.closing) != Py_False || !policy ||
        Py_TYPE(policy) != quick.policy_type || !stats)
        return 0;
    if (!attr_is(policy, quick.state, quick.zerocopy) || !attr_is(policy, quick.streak, NULL) ||
        !attr_is(policy, quick.probe, Py_False))
        return 0;
    r = PyObject_GetAttr(stats, quick.state);
    ok = r && PyUnicode_Check(r) && PyUnicode_CompareWithASCIIString(r, "zerocopy") == 0;
    Py_XDECREF(r);
    handles = ok && slot_of(self, quick.tracker) ? PyObject_GetAttr(slot_of(self, quick.tracker), quick.handles) : NULL;
    if (!handles || !PyDict_CheckExact(handles) || PyDict_GET_SIZE(handles)) {
        Py_XDECREF(handles);
        PyErr_Clear();
        return 0;
    }
    done = hot_resolve_alike(capsule, handles);
    Py_DECREF(handles);
    if (!done) return -1;
    if (done == Py_None) {
        Py_DECREF(done);
        return 0; /* (not reached: the same conditions were checked) */
    }
    if (PyList_GET_SIZE(PyTuple_GET_ITEM(done, 1))) { /* the general path's writes among them */
        args[0] = self;
        args[1] = PyTuple_GET_ITEM(done, 0);
        args[2] = PyTuple_GET_ITEM(done, 1);
        r = PyObject_VectorcallMethod(quick.others, args, 3, NULL);
        Py_DECREF(done);
        if (!r) return -1;
        Py_DECREF(r);
    } else {
        Py_DECREF(done);
    }
    /* _maybe_resume_protocol: get_write_buffer_size() is the pinned bytes here, as above */
    if (slot_of(self, quick.paused) != Py_True || slot_of(self, quick.conn_lost) != Py_False) return 1;
    low = slot_of(self, quick.low_water);
    low_water = low && PyLong_CheckExact(low) ? PyLong_AsLongLong(low) : -1;
    if (low_water < 0) {
        PyErr_Clear();
        low_water = -1;
    }
    if (low_water < 0 || slot_of(self, quick.batching) != Py_False) { /* Python decides */
        args[0] = self;
        r = PyObject_VectorcallMethod(quick.resume, args, 1, NULL);
        if (!r) return -1;
        Py_DECREF(r);
        return 1;
    }
    if (t->pinned > low_water) return 1;
    quick_set_paused(self, h, 0);
    return quick_call_protocol(self, quick.resume_writing);
}

/* Does the class of `self` run the methods the quick paths stand for as the transport class
 * does? (the loops' subclasses in endpoint.py do; a user's may not) */
static int quick_same_methods(PyObject *self) {
    /* The last class found to run them, at its version tag (which any change to it or to a
     * base clears: a new one is assigned at the next lookup): 16 lookups, ~1.6k instructions,
     * three times per drain cycle otherwise (callgrind). */
    static PyTypeObject *same_type;
    static unsigned int same_version;
    PyTypeObject *tp = Py_TYPE(self);
    int k;
    if (tp == quick.type) return 1;
    if (tp == same_type && (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && tp->tp_version_tag == same_version)
        return 1;
    if (!PyType_IsSubtype(tp, quick.type)) return 0;
    for (k = 0; k < QUICK_METHODS; k++)
        if (_PyType_Lookup(tp, quick.methods[k]) != _PyType_Lookup(quick.type, quick.methods[k])) return 0;
    if (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) { /* (a version tag is never reused: a */
        same_type = tp;                                 /*  new class at this address differs) */
        same_version = tp->tp_version_tag;
    }
    return 1;
}

/* A send's result flags handled in C where they are the common ones (see above). */
static int quick_flags(PyObject *self, zc_hot *h, PyObject *capsule, int64_t flags) {
    if (!quick_same_methods(self)) return 0;
    if (flags == DG_F_PAUSE) return quick_pause(self, h);
    if (flags == DG_F_RESOLVED) return quick_resolved(self, h, capsule);
    return 0;
}

static PyObject *meth_sendto_zc(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    zc_method *m = &zc_methods[0];
    PyObject *hot, *future, *r, *call[2];
    zc_hot *h;
    int64_t code, flags;
    int handled;
    if (nargs != 1 || kwnames || !(hot = method_hot(m, self))) return call_pure(m, self, args, nargs, kwnames);
    if (!(h = hot_of(hot))) return NULL;
    future = hot_send_filed(h, args[0], 1, &code, &flags);
    if (!future) {
        if (PyErr_Occurred() || !(r = PyLong_FromLongLong(code))) return NULL;
        future = method_returned(m, self, r, args[0]);
        Py_DECREF(r);
        return future;
    }
    if (!flags) return future;
    /* the drain's findings, pause_writing: the future is filed first, as _hot_flags does */
    handled = quick.type ? quick_flags(self, h, hot, flags) : 0;
    if (handled < 0) goto fail;
    if (handled) return future;
    call[0] = self;
    if (!(call[1] = PyLong_FromLongLong(flags))) goto fail;
    r = PyObject_VectorcallMethod(m->more, call, 2, NULL);
    Py_DECREF(call[1]);
    if (!r) goto fail;
    Py_DECREF(r);
    return future;
fail:
    Py_DECREF(future);
    return NULL;
}

static PyObject *meth_sendto(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    zc_method *m = &zc_methods[1];
    PyObject *hot, *code, *done;
    zc_hot *h;
    int64_t r;
    if (nargs != 1 || kwnames || !(hot = method_hot(m, self))) return call_pure(m, self, args, nargs, kwnames);
    if (!(h = hot_of(hot))) return NULL;
    r = zc_dgram_sendto_obj(h->d, (intptr_t)args[0]);
    if (r == 0) Py_RETURN_NONE; /* sent, nothing more to do */
    if (!(code = PyLong_FromLongLong(r))) return NULL;
    done = method_returned(m, self, code, args[0]);
    Py_DECREF(code);
    if (!done) return NULL;
    Py_DECREF(done);
    Py_RETURN_NONE;
}

static PyMethodDef zc_method_defs[2] = {
    {"sendto_zc", (PyCFunction)(void (*)(void))meth_sendto_zc, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sendto", (PyCFunction)(void (*)(void))meth_sendto, METH_FASTCALL | METH_KEYWORDS, NULL},
};

/* Offset of the __slots__ member `name` of `type`, or -1 (with no exception). */
static Py_ssize_t member_offset(PyTypeObject *type, const char *name) {
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    PyMemberDef *def;
    if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) return -1;
    def = ((PyMemberDescrObject *)descr)->d_member;
    return def->type == T_OBJECT_EX ? def->offset : -1;
}

/* `signature\n--\n\n` and the Python method's docstring: help() and inspect read them. */
static const char *method_doc(const char *signature, PyObject *pure) {
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

/* Make the C methods of the transport class `type` (whose Python sendto_zc / sendto are
 * `pure_zc` / `pure_sendto`, and which has the slots _hot_zc, _hot_send and _coalesce) and
 * put them into the dict `into` by name. Once per process; 0, or -1 with nothing put. */
static int quick_setup(PyTypeObject *tp, PyObject *policy_type, PyObject *zerocopy) {
    const char *names[9] = {"_protocol", "_protocol_paused", "_conn_lost", "_closing", "_batching",
                            "_policy", "stats", "_tracker", "_low_water"};
    Py_ssize_t *offsets[9] = {&quick.protocol, &quick.paused, &quick.conn_lost, &quick.closing, &quick.batching,
                              &quick.policy, &quick.stats, &quick.tracker, &quick.low_water};
    PyObject **interned[9] = {&quick.state, &quick.streak, &quick.probe, &quick.handles, &quick.pause_writing,
                              &quick.resume_writing, &quick.failed, &quick.others, &quick.resume};
    const char *strings[9] = {"state", "_copied_streak", "_probe_in_flight", "_handles", "pause_writing",
                              "resume_writing", "_hot_protocol_failed", "_hot_resolve_others",
                              "_maybe_resume_protocol"};
    int k;
    for (k = 0; k < 9; k++)
        if ((*offsets[k] = member_offset(tp, names[k])) < 0) return -1;
    for (k = 0; k < 9; k++)
        if (!(*interned[k] = PyUnicode_InternFromString(strings[k]))) return -1;
    for (k = 0; k < QUICK_METHODS; k++)
        if (!(quick.methods[k] = PyUnicode_InternFromString(quick_method_names[k]))) return -1;
    Py_INCREF(policy_type);
    Py_INCREF(zerocopy);
    quick.policy_type = (PyTypeObject *)policy_type;
    quick.zerocopy = zerocopy;
    quick.type = tp; /* last: the quick path runs once this is set */
    return 0;
}

/* The same C methods for `type`, a subclass of the transport class zc_dgram_methods set up,
 * put into the dict `into`. Why: CPython 3.11 specializes a call of a C method only for an
 * instance of the exact class the method descriptor names (PRECALL_METHOD_DESCRIPTOR_FAST_
 * WITH_KEYWORDS); on an instance of a subclass (the transports endpoint.py makes are) the call
 * goes through PyObject_Vectorcall, method_vectorcall_FASTCALL_KEYWORDS and a subtype check:
 * ~0.11k instructions per sendto_zc (callgrind). 0, or -1 (nothing put). */
int zc_dgram_methods_on(intptr_t type, intptr_t into) {
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *descrs[2] = {NULL, NULL};
    int k, rc = -1;
    if (!zc_methods_type || !PyType_IsSubtype(tp, zc_methods_type)) return -1;
    for (k = 0; k < 2; k++)
        if (!(descrs[k] = PyDescr_NewMethod(tp, &zc_method_defs[k]))) goto done;
    for (k = 0; k < 2; k++)
        if (PyDict_SetItemString((PyObject *)into, zc_method_defs[k].ml_name, descrs[k]) < 0) goto done;
    rc = 0;
done:
    for (k = 0; k < 2; k++) Py_XDECREF(descrs[k]);
    if (rc < 0) PyErr_Clear();
    return rc;
}

int zc_dgram_methods(intptr_t type, intptr_t pure_zc, intptr_t pure_sendto, intptr_t policy_type,
                     intptr_t zerocopy, intptr_t into) {
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *pures[2] = {(PyObject *)pure_zc, (PyObject *)pure_sendto};
    const char *returned[2] = {"_hot_zc_returned", "_hot_sendto_result"};
    const char *slots[2] = {"_hot_zc", "_hot_send"};
    const char *signatures[2] = {"sendto_zc($self, buf, addr=None)", "sendto($self, data, addr=None)"};
    PyCFunction hots[2] = {hot_sendto_zc, hot_sendto};
    Py_ssize_t coalesce = member_offset(tp, "_coalesce");
    int k;
    if (zc_methods[0].pure || coalesce < 0) return -1;
    for (k = 0; k < 2; k++) {
        zc_method *m = &zc_methods[k];
        m->fn_offset = member_offset(tp, slots[k]);
        m->returned = PyUnicode_InternFromString(returned[k]);
        m->more = PyUnicode_InternFromString("_hot_more");
        if (m->fn_offset < 0 || !m->returned || !m->more) goto fail;
        m->hot = hots[k];
        m->coalesce_offset = k == 1 ? coalesce : -1;
        m->pure = pures[k];
        Py_INCREF(m->pure);
        zc_method_defs[k].ml_doc = method_doc(signatures[k], m->pure);
    }
    for (k = 0; k < 2; k++) {
        PyObject *descr = PyDescr_NewMethod(tp, &zc_method_defs[k]);
        int failed = !descr || PyDict_SetItemString((PyObject *)into, zc_method_defs[k].ml_name, descr) < 0;
        Py_XDECREF(descr);
        if (failed) goto fail;
    }
    Py_INCREF(tp);
    zc_methods_type = tp;
    if (quick_setup(tp, (PyObject *)policy_type, (PyObject *)zerocopy) < 0) PyErr_Clear(); /* without it */
    return 0;
fail:
    for (k = 0; k < 2; k++) {
        Py_CLEAR(zc_methods[k].pure);
        Py_CLEAR(zc_methods[k].returned);
        Py_CLEAR(zc_methods[k].more);
    }
    PyErr_Clear();
    return -1;
}
