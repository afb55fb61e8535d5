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

/* What makes a transport's plain futures (zc_futures_new): shared by the datagram builtins
 * here and the TCP transport's C methods (_core_tcp.c). */
typedef struct {
    PyObject *loop, *future_type; /* loop None: its futures are not plain, Python makes them */
    PyObject *no_args, *loop_kwargs; /* () and {"loop": loop}: Future(loop=loop), made once */
    PyObject *debug; /* what loop.get_debug() reads: an interned attribute name, or the bound method */
    Py_ssize_t loop_offset; /* where a Future keeps its loop (zc_future_loop_offset), or 0 */
    int debug_on, debug_age; /* get_debug()'s last answer, futures made since it was read */
} zc_futures;

typedef struct {
    zc_dgram *d;
    PyObject *owner, *tokens;
    zc_futures fut;
    PyObject *set_result; /* Future.set_result, the method descriptor: no lookup per call */
    PyCFunction set_result_o; /* its C function when it is a METH_O one (asyncio's C Future):
                               * called directly, without method_vectorcall_O's checks around
                               * it (~0.09k instructions per future, callgrind) */
    PyObject *make_completion; /* ctracker._completion(nbytes, zerocopy, ids, copied) */
    PyObject *last; /* the Completion resolve_alike made last, for last_key (or NULL) */
    int64_t last_key[4];
    PyObject *invalid_state; /* asyncio.InvalidStateError: a cancelled future's set_result */
} zc_hot;

static void zc_futures_clear(zc_futures *f) {
    Py_CLEAR(f->loop);
    Py_CLEAR(f->future_type);
    Py_CLEAR(f->no_args);
    Py_CLEAR(f->loop_kwargs);
    Py_CLEAR(f->debug);
}

static void hot_clear(zc_hot *h) {
    Py_XDECREF(h->owner);
    Py_XDECREF(h->tokens);
    zc_futures_clear(&h->fut);
    Py_XDECREF(h->set_result);
    Py_XDECREF(h->invalid_state);
    Py_XDECREF(h->make_completion);
    Py_XDECREF(h->last);
    free(h);
}

static void hot_free(PyObject *capsule) {
    zc_hot *h = PyCapsule_GetPointer(capsule, "aiozc.hot");
    if (h) hot_clear(h);
}

/* (the capsule's context is the zc_hot too: PyCapsule_GetContext checks no name, a strcmp
 * per call less; the builtins made here are the only holders of these capsules) */
static zc_hot *hot_of(PyObject *self) { return (zc_hot *)PyCapsule_GetContext(self); }

/* Where a Future made by `future_type`'s tp_new keeps its loop, found by comparing one left
 * as tp_new made it with one that Future.__init__(loop=probe) set up, `probe` an object whose
 * get_debug() is false: the offset of the one pointer-sized word that differs, which holds
 * `probe` in the second and NULL in the first; 0 where any other byte differs (another
 * CPython's layout, an __init__ that sets more), and the futures are made by tp_init. */
int64_t zc_future_loop_offset(intptr_t future_type, intptr_t probe) {
    PyTypeObject *type = (PyTypeObject *)future_type;
    PyObject *no_args = PyTuple_New(0), *kwargs = Py_BuildValue("{sO}", "loop", (PyObject *)probe);
    PyObject *bare = NULL, *made = NULL;
    Py_ssize_t off, found = 0, size = type->tp_basicsize;
    if (no_args && kwargs) {
        bare = type->tp_new(type, no_args, NULL);
        made = type->tp_new(type, no_args, NULL);
        if (made && type->tp_init(made, no_args, kwargs) < 0) Py_CLEAR(made);
    }
    if (bare && made && type->tp_itemsize == 0 && size % (Py_ssize_t)sizeof(PyObject *) == 0) {
        for (off = sizeof(PyObject); off < size; off += sizeof(PyObject *)) {
            PyObject *a = *(PyObject **)((char *)bare + off), *b = *(PyObject **)((char *)made + off);
            if (a == b) continue;
            if (a || b != (PyObject *)probe || found) {
                found = 0;
                break;
            }
            found = off;
        }
    }
    Py_XDECREF(bare);
    Py_XDECREF(made);
    Py_XDECREF(no_args);
    Py_XDECREF(kwargs);
    PyErr_Clear();
    return found;
}

/* loop.get_debug(): 1, 0, or -1 with an exception. asyncio's reads the `_debug` attribute
 * (f->debug is then that name), uvloop's is a compiled method: 0.19k / 0.13k instructions
 * (callgrind), so it is read again once every DEBUG_EVERY futures, not for each: a
 * set_debug(True) reaches the futures at most that many futures late (those lack the
 * source traceback debug mode records, nothing else). */
#define DEBUG_EVERY 64
static int zc_futures_debug(zc_futures *f) {
    PyObject *r;
    int debug;
    if (f->debug_age++ < DEBUG_EVERY) return f->debug_on;
    r = PyUnicode_Check(f->debug) ? PyObject_GetAttr(f->loop, f->debug) : PyObject_CallNoArgs(f->debug);
    if (!r) return -1;
    debug = r == Py_False ? 0 : r == Py_True ? 1 : PyObject_IsTrue(r);
    Py_DECREF(r);
    if (debug >= 0) {
        f->debug_on = debug;
        f->debug_age = 1;
    }
    return debug;
}

/* A plain future of the transport's loop, what loop.create_future() makes on asyncio's and
 * uvloop's loops: Future(loop=loop). NULL without an exception where the loop's futures are
 * not plain (f->loop is None): Python calls loop.create_future().
 * Not Future() with no arguments: that looks up the running loop, and on CPython 3.11 each
 * lookup is a getpid() system call (~0.7 us here, invisible to callgrind; strace -c: 2 per
 * datagram with the running-loop check this replaced). And not through Future.__init__
 * while the loop is not in debug mode: all it does then is store the loop (the layout
 * zc_future_loop_offset checked), after parsing the keyword dict and calling get_debug(),
 * a Python method on asyncio's loop: 1.03k of the 4.64k instructions per sendto_zc there,
 * 0.58k of 4.12k on uvloop (callgrind). In debug mode it also records the traceback: then
 * the future is made by __init__ (see zc_futures_debug for when debug mode is read). */
static PyObject *zc_futures_new(zc_futures *f) {
    PyTypeObject *type = (PyTypeObject *)f->future_type;
    PyObject *future;
    int debug = 1;
    if (f->loop == Py_None) return NULL;
    future = type->tp_new(type, f->no_args, NULL); /* what type_call does, for the one exact type */
    if (!future) return NULL;
    if (f->loop_offset && (debug = zc_futures_debug(f)) == 0) {
        Py_INCREF(f->loop);
        *(PyObject **)((char *)future + f->loop_offset) = f->loop;
        return future;
    }
    if (debug < 0 || type->tp_init(future, f->no_args, f->loop_kwargs) < 0) Py_CLEAR(future);
    return future;
}

/* Set up `f` (zeroed) for `loop`'s futures of `future_type`: `loop` None where they are not
 * plain, `debug` what get_debug() reads (or None), `loop_offset` zc_future_loop_offset's
 * answer. 0, or -1 with an exception (out of memory), `f` then cleared. */
static int zc_futures_init(zc_futures *f, PyObject *loop, PyObject *future_type, PyObject *debug,
                           Py_ssize_t loop_offset) {
    PyObject *key = PyUnicode_InternFromString("loop"); /* interned, as the parser's: found by identity */
    f->no_args = PyTuple_New(0);
    f->loop_kwargs = PyDict_New();
    if (!f->no_args || !f->loop_kwargs || !key || PyDict_SetItem(f->loop_kwargs, key, loop) < 0) {
        Py_XDECREF(key);
        zc_futures_clear(f);
        return -1;
    }
    Py_DECREF(key);
    f->loop = Py_NewRef(loop);
    f->future_type = Py_NewRef(future_type);
    f->debug = Py_NewRef(debug);
    f->loop_offset = loop_offset;
    f->debug_age = DEBUG_EVERY; /* read at the first future */
    return 0;
}

/* A write the socket took whole by copy is done before write_zc() returns, so its future is
 * born done. Making one (tp_new, the loop stored, set_result) and freeing it when the caller
 * drops it cost ~0.4k user instructions per 64 KiB write_zc() on uvloop (callgrind: alloc,
 * finalizer, clear, dealloc, set_result, schedule_callbacks), and in a real run that code and
 * data are cold behind every 64 KiB copy. So the last ZC_DONE_KEEP given out are kept, and one
 * is given out again while that cannot be told from a new one: nothing else refers to it (the caller
 * dropped it; a callback added to a done future is scheduled with a reference of its own),
 * nothing was recorded on it (no instance dict, no weak reference, _asyncio_future_blocking
 * false, _cancel_message None: what a holder could set on a done future), the same type, the
 * same result, and not in debug mode (a new future then records where it was made). A done
 * future's state and result cannot change. */
#define ZC_DONE_KEEP 4 /* (a writer keeping the last future, `last = write_zc(buf)`, drops the one before) */
typedef struct {
    PyObject *future[ZC_DONE_KEEP]; /* done futures given out, or NULL */
    PyObject *result[ZC_DONE_KEEP]; /* their results (borrowed: each future holds its own) */
    int next; /* the slot a new one takes */
} zc_done_keep;

static PyTypeObject *zc_done_type; /* the future type whose getters are below */
static getter zc_done_blocking, zc_done_cancel_message; /* its getset getters, or NULL: no reuse */

static getter zc_done_getter(PyTypeObject *type, const char *name) {
    PyObject *d = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (!d || Py_TYPE(d) != &PyGetSetDescr_Type) return NULL;
    return ((PyGetSetDescrObject *)d)->d_getset->get;
}

/* 1: `fut` can be given out again as a new done future (see above), 0 not. */
static int zc_done_unshared(zc_futures *f, PyObject *fut) {
#ifdef Py_GIL_DISABLED
    (void)f;
    (void)fut;
    return 0; /* (another thread may hold a reference the count does not show yet) */
#else
    PyTypeObject *t = Py_TYPE(fut);
    PyObject *v;
    int quiet;
    if (Py_REFCNT(fut) != 1 || t != zc_done_type || t != (PyTypeObject *)f->future_type || !zc_done_blocking ||
        !zc_done_cancel_message || t->tp_dictoffset <= 0 || t->tp_weaklistoffset <= 0 ||
        *(PyObject **)((char *)fut + t->tp_dictoffset) || *(PyObject **)((char *)fut + t->tp_weaklistoffset))
        return 0;
    if (!(v = zc_done_blocking(fut, NULL))) return -1;
    quiet = v == Py_False;
    Py_DECREF(v);
    if (!quiet) return 0;
    if (!(v = zc_done_cancel_message(fut, NULL))) return -1;
    quiet = v == Py_None;
    Py_DECREF(v);
    return quiet;
#endif
}

/* A done future of f's loop whose result is `result` (a new reference): keep->future again if
 * it may be (see above), else a new one resolved through `set_result` (Future.set_result, the
 * method descriptor), which is kept. NULL without an exception where f's futures are not
 * plain (the caller makes one), NULL with one on an error. */
static PyObject *zc_futures_done(zc_futures *f, PyObject *set_result, zc_done_keep *keep, PyObject *result) {
    PyObject *future, *r, *args[2];
    int debug = 1, reuse, k;
    if (f->loop == Py_None || !f->loop || !set_result) return NULL;
    if (zc_done_type != (PyTypeObject *)f->future_type) {
        zc_done_type = (PyTypeObject *)f->future_type;
        zc_done_blocking = zc_done_getter(zc_done_type, "_asyncio_future_blocking");
        zc_done_cancel_message = zc_done_getter(zc_done_type, "_cancel_message");
    }
    if (f->loop_offset && (debug = zc_futures_debug(f)) < 0) return NULL;
    for (k = 0; !debug && k < ZC_DONE_KEEP; k++) {
        if (!keep->future[k] || keep->result[k] != result) continue;
        if ((reuse = zc_done_unshared(f, keep->future[k])) < 0) return NULL;
        if (reuse) return Py_NewRef(keep->future[k]);
    }
    if (!(future = zc_futures_new(f))) return NULL;
    args[0] = future;
    args[1] = result;
    if (!(r = PyObject_Vectorcall(set_result, args, 2, NULL))) {
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(r);
    if (!debug) {
        k = keep->next;
        keep->next = (k + 1) % ZC_DONE_KEEP;
        Py_XSETREF(keep->future[k], Py_NewRef(future));
        keep->result[k] = result;
    }
    return future;
}

static int zc_done_traverse(zc_done_keep *keep, visitproc visit, void *arg) {
    int k;
    for (k = 0; k < ZC_DONE_KEEP; k++) Py_VISIT(keep->future[k]);
    return 0;
}

static void zc_done_clear(zc_done_keep *keep) {
    int k;
    for (k = 0; k < ZC_DONE_KEEP; k++) Py_CLEAR(keep->future[k]);
}

/* Send `buf` zero-copy and file its future under the write's slot: the future (a new
 * reference for the caller) with *flags the send's result flags, or NULL with no exception
 * and *code the integer result for Python (an error, a copied datagram, flags when
 * `with_flags` is 0, or no plain future to make), or NULL with an exception. */
static PyObject *hot_send_filed(zc_hot *h, PyObject *buf, int with_flags, int64_t *code, int64_t *flags) {
    PyObject *future, *key;
    int64_t r = zc_dgram_send_obj(h->d, (intptr_t)buf), slot;
    *code = r;
    *flags = r >> DG_SLOT_SHIFT;
    if (r < 0 || (*flags && (!with_flags || (*flags & DG_F_COPY)))) return NULL;
    slot = r & (((int64_t)1 << DG_SLOT_SHIFT) - 1);
    future = zc_futures_new(&h->fut);
    if (!future) return NULL; /* no plain future (Python makes it), or an exception: sent and
                               * filed nowhere, the transport fails */
    if (hold_token(h->d, slot, future) == 0) {
        Py_INCREF(future); /* one for the caller, one held */
        return future;
    }
    key = PyLong_FromLongLong(slot); /* its export could not be held (out of memory): the dict */
    if (!key || PyDict_SetItem(h->tokens, key, future) < 0) {
        Py_XDECREF(key);
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(key);
    return future;
}

/* sendto_zc(buf): the write's future, or the cffi function's integer result for Python. */
static PyObject *hot_sendto_zc(PyObject *self, PyObject *buf) {
    zc_hot *h = hot_of(self);
    PyObject *future;
    int64_t code, flags;
    if (!h) return NULL;
    future = hot_send_filed(h, buf, 0, &code, &flags);
    if (future || PyErr_Occurred()) return future;
    return PyLong_FromLongLong(code);
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
    PyObject *others, **tokens, *r, *small_tokens[64];
    Py_buffer *views, small_views[64];
    int64_t n, k;
    if (!h) return NULL;
    n = h->d->t->nout;
    tokens = small_tokens;
    views = small_views;
    if (n > 64) {
        tokens = malloc((size_t)n * sizeof *tokens);
        views = malloc((size_t)n * sizeof *views);
    }
    others = PyList_New(0);
    if (!tokens || !views || !others) {
        if (tokens != small_tokens) free(tokens);
        if (views != small_views) free(views);
        Py_XDECREF(others);
        return PyErr_NoMemory();
    }
    /* taken before any export ends: that may run a finalizer that sends, and a send drains */
    take_out(h->d, tokens, views);
    for (k = 0; k < n; k++) {
        if (tokens[k] || !PyDict_GET_SIZE(h->tokens)) continue;
        tokens[k] = pop_token(h, h->d->t->out_slot[k]); /* (its export could not be held) */
        if (!tokens[k] && PyErr_Occurred()) break;
    }
    if (PyErr_Occurred()) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb); /* (no exception set while a release may run code) */
        for (k = 0; k < n; k++)
            if (views[k].obj) PyBuffer_Release(&views[k]);
        PyErr_Restore(type, value, tb);
        goto fail;
    }
    for (k = 0; k < n; k++)
        if (views[k].obj) PyBuffer_Release(&views[k]);
    release_trimmed(h->d);
    for (k = 0; k < n; k++) {
        PyObject *token = tokens[k];
        if (!token) continue;
        if (Py_TYPE(token) == (PyTypeObject *)h->fut.future_type) {
            PyObject *args[2] = {token, completion};
            /* (the future's type is the exact type the descriptor belongs to, checked above) */
            r = h->set_result_o ? h->set_result_o(token, completion) : PyObject_Vectorcall(h->set_result, args, 2, NULL);
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
    if (tokens != small_tokens) free(tokens);
    if (views != small_views) free(views);
    return others;
fail:
    for (k = 0; k < n; k++) Py_XDECREF(tokens[k]);
    if (tokens != small_tokens) free(tokens);
    if (views != small_views) free(views);
    Py_DECREF(others);
    return NULL;
}

/* resolve_alike(handles): what hot.py's _hot_resolve_alike did, in C, when the tracker's out
 * arrays hold writes that share one Completion and `handles` (the tracker's open_write
 * handles) is empty: the Completion (the last one again when alike: every drain of
 * same-sized zero-copy datagrams), resolve() above, the zc_writes / zc_write_bytes /
 * copy_writes counters. Returns (completion, others) where others is resolve()'s list, or
 * None: not the case (Python resolves the general way). */
static PyObject *hot_resolve_alike(PyObject *self, PyObject *handles) {
    zc_hot *h = hot_of(self);
    zc_tracker *t;
    PyObject *others, *r;
    int64_t key[4], n;
    if (!h) return NULL;
    t = h->d->t;
    n = t->nout;
    if (!n || !t->out_uniform || !PyDict_Check(handles) || PyDict_GET_SIZE(handles)) Py_RETURN_NONE;
    key[0] = t->out_nbytes[0];
    key[1] = t->out_zc[0] != 0;
    key[2] = t->out_ids[0];
    key[3] = t->out_copied[0];
    if (!h->last || memcmp(key, h->last_key, sizeof key)) {
        PyObject *c = PyObject_CallFunction(h->make_completion, "LOLL", (long long)key[0],
                                            key[1] ? Py_True : Py_False, (long long)key[2],
                                            (long long)key[3]);
        if (!c) return NULL;
        Py_XSETREF(h->last, c);
        memcpy(h->last_key, key, sizeof key);
    }
    if (key[1]) {
        h->d->zc_writes += n;
        h->d->zc_write_bytes += n * key[0];
    } else {
        h->d->copy_writes += n;
    }
    others = hot_resolve(self, h->last);
    if (!others) return NULL;
    r = PyTuple_Pack(2, h->last, others);
    Py_DECREF(others);
    return r;
}

/* ring_failed(): the io_uring engine's failed sends (zc_dgram.fail, see _core_udpring.c), taken:
 * a list of (token, buffer object, ident, res), the token taken from its slot (None where
 * there is none: sendto()), the object whose export the slot holds (None if not held). */
static PyObject *hot_ring_failed(PyObject *self, PyObject *unused) {
    zc_hot *h = hot_of(self);
    zc_dgram *d;
    PyObject *out;
    int64_t k;
    (void)unused;
    if (!h) return NULL;
    d = h->d;
    if (!(out = PyList_New(0))) return NULL;
    for (k = 0; k + 4 <= d->nfail; k += 4) {
        PyObject *token = pop_token(h, d->fail[k]), *obj, *item;
        if (!token && PyErr_Occurred()) goto fail;
        obj = held_obj(d, d->fail[k]);
        item = Py_BuildValue("(NOLL)", token ? token : (Py_INCREF(Py_None), Py_None), obj ? obj : Py_None,
                             (long long)d->fail[k + 1], (long long)d->fail[k + 2]);
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    d->nfail = 0;
    return out;
fail:
    d->nfail = 0;
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef hot_methods[] = {
    {"ring_failed", hot_ring_failed, METH_NOARGS, "ring_failed() -> [(token, obj, ident, res)]"},
    {"sendto_zc", hot_sendto_zc, METH_O, "sendto_zc(buf) -> Future | int"},
    {"sendto", hot_sendto, METH_O, "sendto(buf) -> int"},
    {"resolve", hot_resolve, METH_O, "resolve(completion) -> list of other tokens"},
    {"resolve_alike", hot_resolve_alike, METH_O, "resolve_alike(handles) -> (completion, others) | None"},
    {"pop", (PyCFunction)(void (*)(void))hot_pop, METH_FASTCALL, "pop(slot, default) -> token"},
    {NULL, NULL, 0, NULL},
};

/* Put the builtins of `d` (owned by the cffi object `owner`) into the dict `into`, by name.
 * `loop` is None where the loop's futures are not plain asyncio futures; `debug` is what
 * its get_debug() reads (zc_futures_debug), `loop_offset` zc_future_loop_offset's answer. 0, or -1 with
 * nothing put (out of memory, or the error is cleared: Python stays on the cffi calls). */
int zc_dgram_bind(zc_dgram *d, intptr_t owner, intptr_t tokens, intptr_t loop, intptr_t future_type,
                  intptr_t invalid_state, intptr_t make_completion, intptr_t debug, int64_t loop_offset,
                  intptr_t into) {
    zc_hot *h = calloc(1, sizeof *h);
    PyObject *capsule, *fn;
    PyMethodDef *m;
    int failed = 0;
    if (!h) return -1;
    h->d = d;
    h->set_result = PyObject_GetAttrString((PyObject *)future_type, "set_result");
    if (!h->set_result || zc_futures_init(&h->fut, (PyObject *)loop, (PyObject *)future_type,
                                          (PyObject *)debug, (Py_ssize_t)loop_offset) < 0) {
        Py_XDECREF(h->set_result);
        free(h);
        PyErr_Clear();
        return -1;
    }
    if (Py_IS_TYPE(h->set_result, &PyMethodDescr_Type) &&
        ((PyMethodDescrObject *)h->set_result)->d_method->ml_flags == METH_O &&
        ((PyMethodDescrObject *)h->set_result)->d_common.d_type == (PyTypeObject *)future_type)
        h->set_result_o = ((PyMethodDescrObject *)h->set_result)->d_method->ml_meth;
    h->owner = (PyObject *)owner;
    h->tokens = (PyObject *)tokens;
    h->invalid_state = (PyObject *)invalid_state;
    h->make_completion = (PyObject *)make_completion;
    Py_INCREF(h->make_completion);
    Py_INCREF(h->owner);
    Py_INCREF(h->tokens);
    Py_INCREF(h->invalid_state);
    capsule = PyCapsule_New(h, "aiozc.hot", hot_free);
    if (!capsule) {
        hot_clear(h);
        PyErr_Clear();
        return -1;
    }
    if (PyCapsule_SetContext(capsule, h) < 0) {
        Py_DECREF(capsule); /* its destructor frees h */
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

