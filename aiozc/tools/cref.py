"""C reference senders and callgrind markers, compiled with cffi at bench time.

Two benchmark needs share one small C module:

* the ceiling: what a hand-written C sender costs for the same datagrams (a plain ``send`` loop,
  ``send(MSG_ZEROCOPY)``, ``sendmmsg(MSG_ZEROCOPY)``, io_uring ``SEND_ZC`` with or without fixed
  buffers, ``per_submit`` SQEs per ``io_uring_enter``), measured in the same run as the Python
  rows so that ratios against it are side by side;
* callgrind client requests (zero / dump the counters from inside the measured process), so an
  instruction count covers exactly the measured calls. Without ``valgrind/callgrind.h`` the
  markers compile to nothing and :func:`callgrind_markers` says so.

The module is built into a cache directory (``$AIOZC_CACHE``, else ``~/.cache/aiozc``) keyed by
a hash of its source, once per machine. :func:`load` returns ``(lib, None)`` or
``(None, reason)``: without a compiler (or Python headers) the benches skip these rows and print
the reason; nothing in the library depends on this file.

Every C loop sends until ``count`` datagrams were accepted (a send refused for now, ENOBUFS or
EAGAIN, is sent again after draining), then waits until every zero-copy send is notified, as
the Python cases await every future.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

CDEF = """
struct cref_result {
    long sent;          /* datagrams accepted by the kernel */
    long refused;       /* sends refused for now (ENOBUFS/EAGAIN), sent again */
    long completions;   /* zero-copy ids notified */
    long copied;        /* of those, reported copied (ee_code / NOTIF_USAGE_ZC_COPIED) */
    long syscalls;      /* send/sendmmsg/io_uring_enter calls */
    long errq_reads;    /* recvmsg(MSG_ERRQUEUE) calls that returned a notification */
};
int cref_send(int fd, char *base, size_t pool, size_t size, long count, struct cref_result *r);
int cref_send_zc(int fd, char *base, size_t pool, size_t size, long count, int drain_every,
                 struct cref_result *r);
int cref_sendmmsg_zc(int fd, char *base, size_t pool, size_t size, long count, int batch,
                     struct cref_result *r);
int cref_uring_send_zc(int fd, char *base, size_t pool, size_t size, long count, int per_submit,
                       int fixed, struct cref_result *r);
int cref_has_callgrind(void);
unsigned cref_running_on_valgrind(void);
void cref_cg_start(void);
void cref_cg_zero(void);
void cref_cg_dump(const char *name);
"""

C_SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/errqueue.h>
#include <linux/io_uring.h>

#if defined(__has_include)
#  if __has_include(<valgrind/callgrind.h>)
#    include <valgrind/callgrind.h>
#    define CREF_HAS_CALLGRIND 1
#  endif
#endif
#ifndef CREF_HAS_CALLGRIND
#  define CREF_HAS_CALLGRIND 0
#  define CALLGRIND_START_INSTRUMENTATION
#  define CALLGRIND_ZERO_STATS
#  define CALLGRIND_DUMP_STATS_AT(name)
#  define RUNNING_ON_VALGRIND 0
#endif
#ifndef MSG_ZEROCOPY
#  define MSG_ZEROCOPY 0x4000000
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#  define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#define CREF_MAX_BATCH 1024

struct cref_result {
    long sent, refused, completions, copied, syscalls, errq_reads;
};

int cref_has_callgrind(void) { return CREF_HAS_CALLGRIND; }
unsigned cref_running_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void cref_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cref_cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cref_cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); (void)name; }

static size_t next_offset(size_t off, size_t size, size_t pool) {
    return off + 2 * size > pool ? 0 : off + size;
}

static int refused_for_now(int err) { return err == ENOBUFS || err == EAGAIN || err == ENOMEM; }

int cref_send(int fd, char *base, size_t pool, size_t size, long count, struct cref_result *r) {
    size_t off = 0;
    while (r->sent < count) {
        ssize_t n = send(fd, base + off, size, 0);
        r->syscalls++;
        if (n < 0) {
            if (!refused_for_now(errno)) return -errno;
            r->refused++;
            continue;
        }
        r->sent++;
        off = next_offset(off, size, pool);
    }
    return 0;
}

/* Read every notification queued now; returns 0 or -errno. */
static int drain_errqueue(int fd, struct cref_result *r) {
    char control[128];
    for (;;) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return errno == EAGAIN ? 0 : -errno;
        r->errq_reads++;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            struct sock_extended_err *ee = (struct sock_extended_err *)CMSG_DATA(c);
            if (ee->ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
            long ids = (long)(ee->ee_data - ee->ee_info) + 1;
            r->completions += ids;
            if (ee->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) r->copied += ids;
        }
    }
}

/* Until every zero-copy send so far is notified (the ids are the accepted sends). */
static int wait_errqueue(int fd, long ids, struct cref_result *r) {
    while (r->completions < ids) {
        struct pollfd p = {fd, 0, 0};
        if (poll(&p, 1, 5000) == 0) return -ETIMEDOUT;
        int err = drain_errqueue(fd, r);
        if (err) return err;
    }
    return 0;
}

int cref_send_zc(int fd, char *base, size_t pool, size_t size, long count, int drain_every,
                 struct cref_result *r) {
    size_t off = 0;
    int err;
    while (r->sent < count) {
        ssize_t n = send(fd, base + off, size, MSG_ZEROCOPY);
        r->syscalls++;
        if (n < 0) {
            if (!refused_for_now(errno)) return -errno;
            r->refused++;
            if ((err = drain_errqueue(fd, r))) return err;
            continue;
        }
        r->sent++;
        off = next_offset(off, size, pool);
        if (r->sent % drain_every == 0 && (err = drain_errqueue(fd, r))) return err;
    }
    return wait_errqueue(fd, r->sent, r);
}

int cref_sendmmsg_zc(int fd, char *base, size_t pool, size_t size, long count, int batch,
                     struct cref_result *r) {
    static struct mmsghdr msgs[CREF_MAX_BATCH];
    static struct iovec iovs[CREF_MAX_BATCH];
    size_t off = 0;
    int err;
    if (batch < 1 || batch > CREF_MAX_BATCH) return -EINVAL;
    while (r->sent < count) {
        int k = count - r->sent < batch ? (int)(count - r->sent) : batch;
        size_t o = off;
        for (int i = 0; i < k; i++) {
            iovs[i].iov_base = base + o;
            iovs[i].iov_len = size;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            o = next_offset(o, size, pool);
        }
        int n = sendmmsg(fd, msgs, k, MSG_ZEROCOPY);
        r->syscalls++;
        if (n < 0) {
            if (!refused_for_now(errno)) return -errno;
            r->refused++;
            n = 0;
        }
        for (int i = 0; i < n; i++) off = next_offset(off, size, pool);
        r->sent += n;
        if ((err = drain_errqueue(fd, r))) return err;
    }
    return wait_errqueue(fd, r->sent, r);
}

/* io_uring through the raw system calls (no liburing: Debian's lacks SEND_ZC usage reports). */
struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_ptr, *cq_ptr;
    size_t sq_len, cq_len, sqes_len;
};

static void ring_close(struct ring *q) {
    if (q->sqes) munmap(q->sqes, q->sqes_len);
    if (q->cq_ptr && q->cq_ptr != q->sq_ptr) munmap(q->cq_ptr, q->cq_len);
    if (q->sq_ptr) munmap(q->sq_ptr, q->sq_len);
    if (q->fd >= 0) close(q->fd);
}

static int ring_open(struct ring *q, unsigned entries) {
    struct io_uring_params p;
    memset(q, 0, sizeof *q);
    memset(&p, 0, sizeof p);
    /* One thread submits and reaps; task work runs when we wait: the cheapest mode. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    q->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (q->fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof p);
        q->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    }
    if (q->fd < 0) return -errno;
    q->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    q->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP && q->cq_len > q->sq_len) q->sq_len = q->cq_len;
    q->sq_ptr = mmap(0, q->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd,
                     IORING_OFF_SQ_RING);
    if (q->sq_ptr == MAP_FAILED) { q->sq_ptr = 0; ring_close(q); return -ENOMEM; }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        q->cq_ptr = q->sq_ptr;
    } else {
        q->cq_ptr = mmap(0, q->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd,
                         IORING_OFF_CQ_RING);
        if (q->cq_ptr == MAP_FAILED) { q->cq_ptr = 0; ring_close(q); return -ENOMEM; }
    }
    q->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    q->sqes = mmap(0, q->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd,
                   IORING_OFF_SQES);
    if (q->sqes == MAP_FAILED) { q->sqes = 0; ring_close(q); return -ENOMEM; }
    char *sq = q->sq_ptr, *cq = q->cq_ptr;
    q->sq_head = (unsigned *)(sq + p.sq_off.head);
    q->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    q->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    q->sq_array = (unsigned *)(sq + p.sq_off.array);
    q->cq_head = (unsigned *)(cq + p.cq_off.head);
    q->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    q->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    q->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

/* Reap every CQE there is; *inflight counts sends whose last CQE is still due. */
static void ring_reap(struct ring *q, long *inflight, struct cref_result *r) {
    unsigned head = *q->cq_head;
    unsigned tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        struct io_uring_cqe *cqe = &q->cqes[head & q->cq_mask];
        if (cqe->flags & IORING_CQE_F_NOTIF) {
            r->completions++;
            if ((unsigned)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED) r->copied++;
            (*inflight)--;
            continue;
        }
        if (cqe->res >= 0) r->sent++;
        else r->refused++;  /* sent again by the caller's loop */
        if (!(cqe->flags & IORING_CQE_F_MORE)) (*inflight)--;  /* no notification follows */
    }
    __atomic_store_n(q->cq_head, head, __ATOMIC_RELEASE);
}

static int ring_enter(struct ring *q, unsigned submit, unsigned wait, struct cref_result *r) {
    r->syscalls++;
    int n = (int)syscall(__NR_io_uring_enter, q->fd, submit, wait,
                         wait ? IORING_ENTER_GETEVENTS : 0, 0, 0);
    return n < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY ? -errno : 0;
}

int cref_uring_send_zc(int fd, char *base, size_t pool, size_t size, long count, int per_submit,
                       int fixed, struct cref_result *r) {
    const unsigned entries = 256;
    const long max_inflight = 128;  /* 2 CQEs per send: stays within the 512-entry CQ ring */
    struct ring q;
    int err = ring_open(&q, entries);
    if (err) return err;
    if (fixed) {
        struct iovec iov = {base, pool};
        if (syscall(__NR_io_uring_register, q.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0) {
            err = -errno;
            ring_close(&q);
            return err;
        }
    }
    long inflight = 0, results_due = 0;
    size_t off = 0;
    if (per_submit < 1) per_submit = 1;
    while (r->sent < count || inflight > 0) {
        long want = count - r->sent - results_due;
        long room = max_inflight - inflight;
        long k = want < per_submit ? want : per_submit;
        if (k > room) k = room;
        if (k < 0) k = 0;
        unsigned tail = *q.sq_tail;
        for (long i = 0; i < k; i++) {
            unsigned index = tail & q.sq_mask;
            struct io_uring_sqe *sqe = &q.sqes[index];
            memset(sqe, 0, sizeof *sqe);
            sqe->opcode = IORING_OP_SEND_ZC;
            sqe->fd = fd;
            sqe->addr = (uint64_t)(uintptr_t)(base + off);
            sqe->len = (unsigned)size;
            if (fixed) sqe->ioprio = IORING_RECVSEND_FIXED_BUF;  /* buf_index 0: the pool */
            q.sq_array[index] = index;
            tail++;
            off = next_offset(off, size, pool);
        }
        __atomic_store_n(q.sq_tail, tail, __ATOMIC_RELEASE);
        inflight += k;
        results_due += k;
        /* Wait for one CQE when nothing more can be submitted, else only submit. */
        unsigned wait = (k == 0 || inflight >= max_inflight) ? 1 : 0;
        if ((err = ring_enter(&q, (unsigned)k, wait, r))) break;
        long before = r->sent + r->refused;
        ring_reap(&q, &inflight, r);
        results_due -= r->sent + r->refused - before;
    }
    ring_close(&q);
    return err;
}
"""

MODULE_PREFIX = "_aiozc_cref_"


class CRef:
    """The compiled module: ``lib`` (the C functions) and its ``ffi``."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi = ffi
        self.lib = lib

    def new_result(self) -> Any:
        return self.ffi.new("struct cref_result *")

    def pointer(self, buf: Any) -> Any:
        """``char[]`` over a writable Python buffer (valid while ``buf`` lives)."""
        return self.ffi.from_buffer(buf)


_loaded: tuple[CRef | None, str | None] | None = None


def cache_dir() -> Path:
    base = os.environ.get("AIOZC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "aiozc")
    return Path(base)


def _module_name() -> str:
    digest = hashlib.sha256((CDEF + C_SOURCE + sys.version).encode()).hexdigest()[:12]
    return MODULE_PREFIX + digest


def _import_from(path: Path, name: str) -> Any:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _built(name: str) -> Path | None:
    for path in sorted(cache_dir().glob(name + ".*.so")) + sorted(cache_dir().glob(name + ".so")):
        return path
    return None


def _build(name: str) -> Path:
    import cffi  # type: ignore[import-untyped]

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, C_SOURCE)
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    # Built in a private directory, then moved into place: two benches starting at once never
    # load a half-written file.
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        final = target / built.name
        os.replace(built, final)
    return final


def compiler_missing() -> str | None:
    """Why the module cannot be built here, before trying; None when a compiler is present."""
    import sysconfig

    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r} not on PATH)"
    include = sysconfig.get_paths().get("include")
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return "no Python headers (Python.h) for cffi's API mode"
    return None


def load() -> tuple[CRef | None, str | None]:
    """``(CRef, None)`` with the compiled module, or ``(None, reason)`` when it cannot be built here. Built once, then loaded from the cache."""
    global _loaded
    if _loaded is not None:
        return _loaded
    name = _module_name()
    path = _built(name)
    if path is None:
        reason = compiler_missing()
        if reason is not None:
            _loaded = (None, reason)
            return _loaded
        try:
            path = _build(name)
        except Exception as exc:  # cffi.VerificationError, distutils CompileError, OSError...
            first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
            _loaded = (None, f"building the C reference module failed: {first[0]}")
            return _loaded
    module = _import_from(path, name)
    _loaded = (CRef(module.ffi, module.lib), None)
    return _loaded


def callgrind_markers() -> tuple[CRef | None, str | None]:
    """The module when its callgrind client requests are real, else ``(None, reason)``."""
    cref, reason = load()
    if cref is None:
        return None, reason
    if not cref.lib.cref_has_callgrind():
        return None, "valgrind/callgrind.h was not found when the C module was built"
    return cref, None


def result_dict(result: Any) -> dict[str, int]:
    """A ``struct cref_result`` as a plain dict."""
    return {
        key: int(getattr(result, key))
        for key in ("sent", "refused", "completions", "copied", "syscalls", "errq_reads")
    }
