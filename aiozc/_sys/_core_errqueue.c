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

/* One extended error read (a copy: CMSG_DATA is not aligned for it), and the message it came
 * in (msg_name: the address it names). 0: read on; > 0: stop here (the rest of the queue stays
 * for the next read), the batch's result. */
typedef int (*zc_eq_handler)(void *ctx, struct sock_extended_err ee, const struct msghdr *msg);

/* Read up to `limit` messages, each extended error to `handler`. *reads: the recvmsg calls
 * made (the last one included, whatever it returned). Returns 0 (the queue is empty, or
 * `limit` messages were read), the handler's stop value, ZC_EQ_TRUNCATED, or -errno of a
 * failed recvmsg (-EINTR too: retrying is the caller's choice). Always inlined, so that each
 * caller's handler is a direct call the compiler may inline (the datagram drain is on the
 * sendto_zc path). */
static inline __attribute__((always_inline)) int zc_errqueue_batch(int fd, int limit, zc_eq_handler handler,
                                                                   void *ctx, int *reads) {
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
        if (r < 0) {
            int err = errno;
            *reads = i + 1;
            return err == EAGAIN || err == EWOULDBLOCK ? 0 : -err;
        }
        if (msg.msg_flags & MSG_CTRUNC) {
            *reads = i + 1;
            return ZC_EQ_TRUNCATED;
        }
        for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            struct sock_extended_err ee;
            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof ee)) continue;
            memcpy(&ee, CMSG_DATA(cm), sizeof ee);
            if ((stop = handler(ctx, ee, &msg))) {
                *reads = i + 1;
                return stop;
            }
        }
    }
    *reads = i;
    return 0;
}
