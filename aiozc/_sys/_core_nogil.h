/* Included after every C source, before the wrappers cffi generates.
 *
 * Every function of the core returns at once: bookkeeping, or a non-blocking system call
 * (MSG_DONTWAIT / O_NONBLOCK sends, error-queue reads, io_uring_enter without waiting).
 * cffi's wrappers release and re-take the GIL and save and restore errno around each call;
 * measured with callgrind (CPython 3.11), that is most of a wrapper's cost (~1.6k
 * instructions per call with it, see the commit). So the wrappers here keep the GIL, and the
 * functions report errors as -errno results instead of through ffi.errno. */
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#define _cffi_restore_errno() ((void)0)
#undef _cffi_save_errno
#define _cffi_save_errno() ((void)0)
