/* The datagram hot path as CPython builtins (METH_O functions), bound to one transport.
 *
 * A cffi call of zc_dgram_send_obj(d, id(buf)) costs ~0.7k user instructions of wrapper
 * (argument tuple, pointer conversion, the int result) before the send, and the future that
 * sendto_zc() returns, its dict entry and the checks around them ~1k more in the interpreter
 * (callgrind, CPython 3.11, both loops). These builtins do the same in C: `sendto_zc(buf)`
 * sends, makes the future and files it under the write's slot in the tracker's token dict,
 * `sendto(buf)` sends, and `resolve(completion)` resolves the writes of a drain that share one
 * Completion. Whatever they cannot decide they hand back as the same integer codes as the
 * cffi functions (see _core_dgram.c), and Python's general path goes on from there.
 *
 * zc_dgram_bind() makes them. Their self is a capsule holding the zc_dgram, a reference to
 * the cffi object that owns it (so it outlives them), the token dict, the transport's loop
 * and asyncio.Future: nothing refers back to the transport.
 */

typedef struct {
    zc_dgram *d;
    PyObject *owner, *tokens, *loop, *future_type;
    PyObject *no_args, *loop_kwargs; /* () and {"loop": loop}: Future(loop=loop), made once */
    PyObject *set_result; /* Future.set_result, the method descriptor: no lookup per call */
    PyObject *invalid_state; /* asyncio.InvalidStateError: a cancelled future's set_result */
} zc_hot;

static void hot_clear(zc_hot *h) {
    Py_XDECREF(h->owner);
    Py_XDECREF(h->tokens);
    Py_XDECREF(h->loop);
    Py_XDECREF(h->future_type);
    Py_XDECREF(h->no_args);
    Py_XDECREF(h->loop_kwargs);
    Py_XDECREF(h->set_result);
    Py_XDECREF(h->invalid_state);
    free(h);
}

static void hot_free(PyObject *capsule) {
    zc_hot *h = PyCapsule_GetPointer(capsule, "aiozc.hot");
    if (h) hot_clear(h);
}

static zc_hot *hot_of(PyObject *self) { return (zc_hot *)PyCapsule_GetPointer(self, "aiozc.hot"); }

/* A plain future of the transport's loop, what loop.create_future() makes on asyncio's and
 * uvloop's loops: Future(loop=loop), with the keyword dict made once (the Future type has no
 * vectorcall: a keyword argument would cost a dict per call). NULL without an exception where
 * the loop's futures are not plain (h->loop is None): Python calls loop.create_future().
 * Not Future() with no arguments: that looks up the running loop, and on CPython 3.11 each
 * lookup is a getpid() system call (~0.7 us here, invisible to callgrind; strace -c: 2 per
 * datagram with the running-loop check this replaced). */
static PyObject *hot_future(zc_hot *h) {
    PyTypeObject *type = (PyTypeObject *)h->future_type;
    PyObject *future;
    if (h->loop == Py_None) return NULL;
    /* what type_call does, for the one exact type bound here (~0.1k instructions less) */
    future = type->tp_new(type, h->no_args, NULL);
    if (future && type->tp_init(future, h->no_args, h->loop_kwargs) < 0) Py_CLEAR(future);
    return future;
}

/* sendto_zc(buf): the write's future, or the cffi function's integer result for Python. */
static PyObject *hot_sendto_zc(PyObject *self, PyObject *buf) {
    zc_hot *h = hot_of(self);
    PyObject *future, *key;
    int64_t r;
    if (!h) return NULL;
    r = zc_dgram_send_obj(h->d, (intptr_t)buf);
    if (r < 0 || r >= ((int64_t)1 << DG_SLOT_SHIFT)) return PyLong_FromLongLong(r);
    future = hot_future(h);
    if (!future) {
        if (PyErr_Occurred()) return NULL; /* sent and filed nowhere: the transport fails */
        return PyLong_FromLongLong(r);
    }
    if (hold_token(h->d, r, future) == 0) {
        Py_INCREF(future); /* one for the caller, one held */
        return future;
    }
    key = PyLong_FromLongLong(r); /* its export could not be held (out of memory): the dict */
    if (!key || PyDict_SetItem(h->tokens, key, future) < 0) {
        Py_XDECREF(key);
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(key);
    return future;
}

/* sendto(buf): zc_dgram_sendto_obj's result (0: nothing for Python to do). */
static PyObject *hot_sendto(PyObject *self, PyObject *buf) {
    zc_hot *h = hot_of(self);
    if (!h) return NULL;
    return PyLong_FromLongLong(zc_dgram_sendto_obj(h->d, (intptr_t)buf));
}

/* The token of `slot`, taken: held here, else popped from the token dict; NULL with no
 * exception where there is none (or the dict is empty, the common case). */
static PyObject *pop_token(zc_hot *h, int64_t slot) {
    PyObject *token = take_token(h->d, slot), *key;
    if (token || !PyDict_GET_SIZE(h->tokens)) return token;
    key = PyLong_FromLongLong(slot);
    if (!key) return NULL;
    token = PyDict_GetItemWithError(h->tokens, key); /* borrowed */
    if (token) {
        Py_INCREF(token);
        if (PyDict_DelItem(h->tokens, key) < 0) Py_CLEAR(token);
    }
    Py_DECREF(key);
    return token;
}

/* pop(slot, default): what tokens.pop(slot, default) gives when the tokens are those held
 * here and those in the dict (ctracker.CompiledTracker._pop_token). */
static PyObject *hot_pop(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    zc_hot *h = hot_of(self);
    PyObject *token;
    long long slot;
    if (!h) return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pop(slot, default)");
        return NULL;
    }
    slot = PyLong_AsLongLong(args[0]);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    token = pop_token(h, slot);
    if (token || PyErr_Occurred()) return token;
    Py_INCREF(args[1]);
    return args[1];
}

/* resolve(completion): the writes in the tracker's out arrays, which share `completion`:
 * their tokens are taken, their buffer exports end (an awaiting caller may reuse its buffer
 * at once), then each plain future gets the result (a cancelled one is skipped). Returns
 * the list of the other tokens (the general path's holders) for Python; sendto() keeps none. */
static PyObject *hot_resolve(PyObject *self, PyObject *completion) {
    zc_hot *h = hot_of(self);
    PyObject *others, **tokens, *r;
    int64_t n, k;
    if (!h) return NULL;
    n = h->d->t->nout;
    /* taken before any export ends: that may run a finalizer that sends, and a send drains */
    tokens = calloc((size_t)(n ? n : 1), sizeof *tokens);
    others = PyList_New(0);
    if (!tokens || !others) {
        free(tokens);
        Py_XDECREF(others);
        return PyErr_NoMemory();
    }
    for (k = 0; k < n; k++) {
        tokens[k] = pop_token(h, h->d->t->out_slot[k]);
        if (!tokens[k] && PyErr_Occurred()) goto fail;
    }
    zc_dgram_release(h->d);
    for (k = 0; k < n; k++) {
        PyObject *token = tokens[k];
        if (!token) continue;
        if (Py_TYPE(token) == (PyTypeObject *)h->future_type) {
            PyObject *args[2] = {token, completion};
            r = PyObject_Vectorcall(h->set_result, args, 2, NULL);
            if (r) {
                Py_DECREF(r);
            } else if (PyErr_ExceptionMatches(h->invalid_state)) {
                PyErr_Clear(); /* cancelled: cheaper than asking done() each time */
            } else {
                goto fail;
            }
        } else if (token != Py_None && PyList_Append(others, token) < 0) {
            goto fail;
        }
    }
    for (k = 0; k < n; k++) Py_XDECREF(tokens[k]);
    free(tokens);
    return others;
fail:
    for (k = 0; k < n; k++) Py_XDECREF(tokens[k]);
    free(tokens);
    Py_DECREF(others);
    return NULL;
}

static PyMethodDef hot_methods[] = {
    {"sendto_zc", hot_sendto_zc, METH_O, "sendto_zc(buf) -> Future | int"},
    {"sendto", hot_sendto, METH_O, "sendto(buf) -> int"},
    {"resolve", hot_resolve, METH_O, "resolve(completion) -> list of other tokens"},
    {"pop", (PyCFunction)(void (*)(void))hot_pop, METH_FASTCALL, "pop(slot, default) -> token"},
    {NULL, NULL, 0, NULL},
};

/* Put the builtins of `d` (owned by the cffi object `owner`) into the dict `into`, by name.
 * `loop` is None where the loop's futures are not plain asyncio futures. 0, or -1 with
 * nothing put (out of memory, or the error is cleared: Python stays on the cffi calls). */
int zc_dgram_bind(zc_dgram *d, intptr_t owner, intptr_t tokens, intptr_t loop, intptr_t future_type,
                  intptr_t invalid_state, intptr_t into) {
    zc_hot *h = calloc(1, sizeof *h);
    PyObject *capsule, *fn, *key;
    PyMethodDef *m;
    int failed = 0;
    if (!h) return -1;
    h->d = d;
    h->set_result = PyObject_GetAttrString((PyObject *)future_type, "set_result");
    h->no_args = PyTuple_New(0);
    h->loop_kwargs = PyDict_New();
    key = PyUnicode_InternFromString("loop"); /* interned, as the parser's: found by identity */
    if (!h->set_result || !h->no_args || !h->loop_kwargs || !key ||
        PyDict_SetItem(h->loop_kwargs, key, (PyObject *)loop) < 0) {
        Py_XDECREF(key);
        Py_XDECREF(h->set_result);
        Py_XDECREF(h->no_args);
        Py_XDECREF(h->loop_kwargs);
        free(h);
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(key);
    h->owner = (PyObject *)owner;
    h->tokens = (PyObject *)tokens;
    h->loop = (PyObject *)loop;
    h->future_type = (PyObject *)future_type;
    h->invalid_state = (PyObject *)invalid_state;
    Py_INCREF(h->owner);
    Py_INCREF(h->tokens);
    Py_INCREF(h->loop);
    Py_INCREF(h->future_type);
    Py_INCREF(h->invalid_state);
    capsule = PyCapsule_New(h, "aiozc.hot", hot_free);
    if (!capsule) {
        hot_clear(h);
        PyErr_Clear();
        return -1;
    }
    for (m = hot_methods; m->ml_name && !failed; m++) {
        fn = PyCFunction_New(m, capsule);
        failed = !fn || PyDict_SetItemString((PyObject *)into, m->ml_name, fn) < 0;
        Py_XDECREF(fn);
    }
    Py_DECREF(capsule); /* the builtins hold it */
    if (failed) PyErr_Clear();
    return failed ? -1 : 0;
}
