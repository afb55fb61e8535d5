"""cffi API-mode builder of the optional compiled core, ``aiozc._sys._core``.

Run at install time through setup.py's ``cffi_modules`` (a compiler is needed; without one
the install still succeeds and aiozc uses its pure-Python path, see setup.py), or by hand
for an in-place build: ``python aiozc/_sys/_core_build.py`` (``make core``; by path, so a stale core
never stops its own rebuild) (writes ``aiozc/_sys/_core*.so``).

The C sources sit next to this file and are compiled as one translation unit.
"""

from __future__ import annotations

import importlib.util
import pathlib

import cffi  # type: ignore[import-untyped]

HERE = pathlib.Path(__file__).resolve().parent


def _load_sources_module():  # type: ignore[no-untyped-def]
    # By path: setup.py's cffi_modules runs this file outside the package.
    spec = importlib.util.spec_from_file_location("_aiozc_core_sources", HERE / "_core_sources.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_sources = _load_sources_module()
C_SOURCES = _sources.C_SOURCES
SOURCE_HASH = _sources.source_hash(HERE)

CDEF = """
#define ZC_CORE_SOURCE_HASH ...
typedef struct zc_tracker {
    int64_t next;
    int64_t outstanding, pinned, unexpected, npending;
    int64_t *out_slot, *out_nbytes, *out_ids, *out_copied;
    int *out_zc;
    int64_t nout;
    int out_uniform;
    ...;
} zc_tracker;

#define ZC_ERR_NOT_LIVE ...
#define ZC_ERR_CLOSED ...
#define ZC_ERR_NBYTES ...
#define ZC_ERR_EXCEEDS ...
#define ZC_ERR_INTERLEAVE ...
#define ZC_ERR_UNSENT ...
#define ZC_ERR_NOMEM ...
#define ZC_RESOLVED_NOW ...

typedef struct zc_dgram {
    int fd;
    int blocked, zerocopy, paused;
    int64_t threshold, max_size, max_pinned, high_water, drain_every, since_drain;
    int64_t zc_sends, zc_bytes, copy_sends, copy_bytes, peak_pinned_bytes, errqueue_reads;
    int64_t notifications, ids_zerocopy, drained_ids, messages;
    int64_t zc_writes, zc_write_bytes, copy_writes;
    uint32_t msg_errno, msg_info, msg_data;
    uint8_t msg_origin, msg_type, msg_code;
    uint8_t msg_addr[28];
    uint32_t msg_addrlen;
    int64_t nheld;
    ...;
} zc_dgram;

#define DG_DECLINED ...
#define DG_TRUNCATED ...
#define DG_F_RESOLVED ...
#define DG_F_MESSAGE ...
#define DG_F_COPY ...
#define DG_F_PAUSE ...
#define DG_F_FAILED ...
#define DG_SLOT_SHIFT ...
#define DG_COPY_ERRNO ...
#define DG_KIND ...
#define DG_F_SUBMIT ...
#define DG_F_RING ...
#define DG_F_UFAIL ...

zc_dgram *zc_dgram_new(int fd, zc_tracker *t);
void zc_dgram_free(zc_dgram *d);
int zc_dgram_drain(zc_dgram *d, int limit);
int64_t zc_dgram_send(zc_dgram *d, const char *buf, int64_t n);
int64_t zc_dgram_send_copy(zc_dgram *d, const char *buf, int64_t n);
int64_t zc_dgram_send_obj(zc_dgram *d, intptr_t obj);
int64_t zc_dgram_sendto_obj(zc_dgram *d, intptr_t obj);
int64_t zc_dgram_release(zc_dgram *d);
int zc_dgram_bind(zc_dgram *d, intptr_t owner, intptr_t tokens, intptr_t loop, intptr_t future_type,
                  intptr_t invalid_state, intptr_t make_completion, intptr_t debug, int64_t loop_offset,
                  intptr_t into);
int64_t zc_future_loop_offset(intptr_t future_type, intptr_t probe);
int zc_dgram_methods(intptr_t type, intptr_t pure_zc, intptr_t pure_sendto, intptr_t policy_type,
                     intptr_t zerocopy, intptr_t into);
int zc_dgram_methods_on(intptr_t type, intptr_t into);
int zc_pins_export(intptr_t into, intptr_t invalid_state);
int zc_recv_export(intptr_t into);
int zc_tcp_methods(intptr_t type, intptr_t pures, intptr_t into);
int zc_tcp_futures(intptr_t hot, intptr_t loop, intptr_t future_type, intptr_t debug, int64_t loop_offset);
int zc_tcp_zc_segment(intptr_t segment_type);
int zc_tcp_zc_bind(intptr_t hot, intptr_t tracker, intptr_t tokens, intptr_t handles, zc_tracker *t,
                   intptr_t loop_time, intptr_t held_type, intptr_t policy_type, intptr_t zerocopy,
                   intptr_t make_completion, intptr_t invalid_state, intptr_t socket_error, intptr_t truncated,
                   intptr_t kernel_dict, intptr_t read_errqueue, int64_t threshold, int64_t max_pinned,
                   int64_t drain_every);

zc_tracker *zc_tracker_new(uint32_t start_id);
void zc_tracker_free(zc_tracker *t);
int64_t zc_open(zc_tracker *t, int64_t nbytes);
int zc_on_sent_copy(zc_tracker *t, int64_t slot, int64_t nbytes);
int64_t zc_on_sent_many(zc_tracker *t, int64_t slot, int64_t nbytes, int64_t ids);
int64_t zc_sent_whole(zc_tracker *t, int64_t nbytes, int zerocopy);
int zc_close(zc_tracker *t, int64_t slot);
int64_t zc_on_range(zc_tracker *t, uint32_t lo, uint32_t hi, int copied);
int64_t zc_abandon(zc_tracker *t);

typedef struct zc_uring {
    uint32_t sq_tail;
    int64_t *ev;
    int64_t nev, filled, next_ud, next_group;
    int err;
    int64_t submits, submitted, fixed_sends;
    int submit_asked;
    ...;
} zc_uring;

#define ZU_GROUP_SIZE ...
#define ZU_EXPECT_ANY ...
#define ZU_EV_G_RESULT ...
#define ZU_EV_G_RELEASE ...
#define ZU_EV_G_RELEASE_COPIED ...
#define ZU_EV_G_RESULTS_IN ...
#define ZU_EV_G_END ...
#define ZU_EV_S_RESULT ...
#define ZU_EV_S_DONE ...
#define ZU_EV_D_PENDING ...

zc_uring *zc_uring_new(int fd, uint32_t setup_flags, uint32_t *sq_khead, uint32_t *sq_ktail,
                       uint32_t *sq_kflags, uint32_t sq_mask, uint32_t sq_entries, void *sqes,
                       uint32_t *cq_khead, uint32_t *cq_ktail, uint32_t cq_mask, void *cqes);
void zc_uring_free(zc_uring *r);
int zc_uring_set_fixed(zc_uring *r, uint64_t *lo, uint64_t *hi, int n);
uint32_t zc_uring_pending(zc_uring *r);
int64_t zc_uring_submit(zc_uring *r);
int64_t zc_uring_send(zc_uring *r, int fd, uint32_t flags, char *buf, int64_t len, char *dest,
                      uint32_t dest_len, int64_t expect);
int64_t zc_uring_send_group(zc_uring *r, int fd, uint32_t flags, char **bufs, int64_t *sizes,
                            int64_t n, int64_t uniform);
int64_t zc_uring_send_pins(zc_uring *r, int fd, uint32_t flags, intptr_t pins);
int64_t zc_uring_reap(zc_uring *r);
void zc_dgram_set_uring(zc_dgram *d, zc_uring *r, int64_t tag, uint32_t flags);
"""

# The datagram path holds buffer exports (Py_buffer: not in the stable ABI before 3.11), so the
# core is built against the full CPython API of the interpreter that builds it.
PRELUDE = f"""
#define ZC_CORE_SOURCE_HASH {SOURCE_HASH}u
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
/* a small function of the per-datagram path, inlined into each caller (GCC's heuristics left
 * these as calls of 8 arguments or with a full prologue: ~0.01k instructions each, callgrind) */
#define ZC_HOT inline __attribute__((always_inline))
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "aiozc._sys._core",
    PRELUDE
    + "\n".join((HERE / name).read_text() for name in C_SOURCES)
    + (HERE / "_core_nogil.h").read_text(),
    extra_compile_args=["-O2", "-std=gnu99", "-Wall", "-Wno-unused-function", "-D_CFFI_NO_LIMITED_API"],
    py_limited_api=False,
)

if __name__ == "__main__":
    # In-place build: the module lands beside this file (the package's parent is the target).
    ffibuilder.compile(tmpdir=str(HERE.parent.parent), verbose=False)
