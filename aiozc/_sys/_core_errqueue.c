/* The error-queue batch read the compiled core's drains share: the TCP transport's
 * (_core_tcpdone.c tcp_drain_errqueue) and the datagram path's (_core_dgram.c errqueue_read).
 * It reads what the reference reader (aiozc/_sys/kernel.py read_errqueue) reads: one
 * recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT) a message, the IP_RECVERR / IPV6_RECVERR control
 * messages of each, in order. What a caller does with each extended error is its own (a
 * handler), and so is what it does when the read ends: the TCP drain retries an interrupted
 * recvmsg and raises, the datagram one stops and reports -errno to Python. */

#include <netinet/in.h>
#include <linux/errqueue.h>

#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif

/* MSG_CTRUNC: the kernel cut a control message (a notification lost with it). Not an errno:
 * recvmsg's own failures come back as -errno. */
#define ZC_EQ_TRUNCATED (-(1 << 20))
/* An interrupted recvmsg's `retry` failed (PyErr_CheckSignals: a signal handler raised). */
#define ZC_EQ_RAISED (-(1 << 20) - 1)

/* One extended error read (a copy: CMSG_DATA is not aligned for it), and the message it came
 * in (msg_name: the address it names). 0: read on; > 0: stop here (the rest of the queue stays
 * for the next read), the batch's result. */
typedef int (*zc_eq_handler)(void *ctx, struct sock_extended_err ee, const struct msghdr *msg);

/* Read up to `limit` messages, each extended error to `handler`. An interrupted recvmsg is
 * called again after `retry` (and is none of the `limit`), or with `retry` NULL ends the batch
 * as -EINTR. *reads (if not NULL) grows by the recvmsg calls made, the last one included
 * whatever it returned. Returns 0 (the queue is empty, or `limit` messages were read), the
 * handler's stop value, ZC_EQ_TRUNCATED, ZC_EQ_RAISED, or -errno of a failed recvmsg. Always
 * inlined: each caller's handler, `retry` and `reads` are then constants the compiler folds
 * (the handler a direct call it may inline: the datagram drain is on the sendto_zc path). */
static inline __attribute__((always_inline)) int zc_errqueue_batch(int fd, int limit, zc_eq_handler handler,
                                                                   void *ctx, int (*retry)(void), int64_t *reads) {
    int i, stop;
    for (i = 0; i < limit; i++) {
        char control[CMSG_SPACE(sizeof(struct sock_extended_err) + 32)]; /* kernel._CMSG_SPACE */
        struct sockaddr_in6 addr;
        struct msghdr msg;
        struct cmsghdr *cm;
        ssize_t r;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &addr;
        msg.msg_namelen = sizeof addr;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        r = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (reads) *reads += 1;
        if (r < 0) {
            if (errno == EINTR && retry) {
                if (retry() < 0) return ZC_EQ_RAISED;
                i--;
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        if (msg.msg_flags & MSG_CTRUNC) return ZC_EQ_TRUNCATED;
        for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            struct sock_extended_err ee;
            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof ee)) continue;
            memcpy(&ee, CMSG_DATA(cm), sizeof ee);
            if ((stop = handler(ctx, ee, &msg))) return stop;
        }
    }
    return 0;
}
