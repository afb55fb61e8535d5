/* The datagram transport's per-call hot path in C: one send call plus its bookkeeping
 * (tracker, counters, the periodic error-queue drain), in one cffi call.
 *
 * What stays in Python (aiozc/datagram/): deciding when this path may run at all
 * (zc_dgram.blocked: not connected, something queued, closing, a send error being
 * classified), every error (the call returns -errno and Python does what the general path
 * does), the policy outside its zerocopy state, and resolving the futures the drain names.
 *
 * The error-queue drain parses what the reference reader (aiozc/_sys/kernel.py
 * read_errqueue) parses. Zero-copy ranges reported as sent from our pages are applied here;
 * the first message of any other kind (a copied range, an ICMP or local error) is kept in
 * zc_dgram.msg_* and the drain stops, so Python handles it and reads the rest in order.
 */

#include <netinet/in.h>
#include <linux/errqueue.h>

#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

#define DG_DECLINED (-(1 << 20)) /* not for this path: Python's general path sends it */
#define DG_TRUNCATED (-(1 << 21)) /* the kernel took fewer bytes than the datagram */
#define DG_F_RESOLVED 1 /* the drain resolved writes: tracker out arrays */
#define DG_F_MESSAGE 2  /* a message for Python is in msg_* (the drain stopped there) */
#define DG_F_COPY 4     /* sent by copy: resolved now, no slot */
#define DG_F_PAUSE 8    /* pinned bytes above the high-water mark and the protocol not paused */
#define DG_F_FAILED 16  /* the drain's recvmsg failed (MSG_CTRUNC: msg_errno = EMSGSIZE) */
#define DG_SLOT_SHIFT 5
#define DG_COPY_ERRNO 4096 /* -errno - this: the failed send was a copying one */

typedef struct zc_dgram {
    int fd;
    int blocked;   /* Python: this path may not run now */
    int zerocopy;  /* Python: policy in its zerocopy state and engine msg_zerocopy */
    int paused;    /* Python: protocol paused (pause_writing called) */
    int64_t threshold, max_size, max_pinned, high_water, drain_every, since_drain;
    zc_tracker *t;
    /* counters (TransportStats fields of the same names) */
    int64_t zc_sends, zc_bytes, copy_sends, copy_bytes, peak_pinned_bytes, errqueue_reads;
    int64_t notifications, ids_zerocopy, drained_ids, messages;
    /* the message the drain stopped at (DG_F_MESSAGE) */
    uint32_t msg_errno, msg_info, msg_data;
    uint8_t msg_origin, msg_type, msg_code;
    uint8_t msg_addr[28];
    uint32_t msg_addrlen;
} zc_dgram;

zc_dgram *zc_dgram_new(int fd, zc_tracker *t) {
    zc_dgram *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->fd = fd;
    d->t = t;
    d->blocked = 1;
    return d;
}

void zc_dgram_free(zc_dgram *d) { free(d); }

/* Read the error queue until empty (at most `limit` messages), applying zero-copy ranges.
 * Returns DG_F_* flags. drained_ids: ids the applied ranges covered (the policy hears). */
static int drained(zc_dgram *d, int flags) {
    return d->drained_ids ? flags | DG_F_RESOLVED : flags;
}

int zc_dgram_drain(zc_dgram *d, int limit) {
    int flags = 0, i;
    d->since_drain = 0;
    d->drained_ids = 0;
    d->t->nout = 0;
    d->t->out_uniform = 1;
    for (i = 0; i < limit; i++) {
        char control[CMSG_SPACE(sizeof(struct sock_extended_err) + 32)];
        struct sockaddr_in6 addr;
        struct msghdr msg;
        struct cmsghdr *cm;
        ssize_t r;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &addr;
        msg.msg_namelen = sizeof addr;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        r = recvmsg(d->fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        d->errqueue_reads++;
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                d->msg_errno = (uint32_t)errno;
                flags |= DG_F_FAILED;
            }
            break;
        }
        if (msg.msg_flags & MSG_CTRUNC) {
            d->msg_errno = EMSGSIZE;
            flags |= DG_F_FAILED;
            break;
        }
        for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            struct sock_extended_err ee;
            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                  (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof ee)) continue;
            memcpy(&ee, CMSG_DATA(cm), sizeof ee);
            if (ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 && !(ee.ee_code & 1)) {
                int64_t n = zc_on_range_append(d->t, ee.ee_info, ee.ee_data);
                if (n < 0) { d->msg_errno = ENOMEM; return drained(d, flags | DG_F_FAILED); }
                d->notifications++;
                d->ids_zerocopy += (int64_t)(uint32_t)(ee.ee_data - ee.ee_info) + 1;
                d->drained_ids += (int64_t)(uint32_t)(ee.ee_data - ee.ee_info) + 1;
                continue;
            }
            d->msg_errno = ee.ee_errno;
            d->msg_origin = ee.ee_origin;
            d->msg_type = ee.ee_type;
            d->msg_code = ee.ee_code;
            d->msg_info = ee.ee_info;
            d->msg_data = ee.ee_data;
            d->msg_addrlen = msg.msg_namelen < sizeof d->msg_addr ? msg.msg_namelen : sizeof d->msg_addr;
            memcpy(d->msg_addr, &addr, d->msg_addrlen);
            d->messages++;
            return drained(d, flags | DG_F_MESSAGE);
        }
    }
    return drained(d, flags);
}

/* Send one datagram of n bytes at buf on the connected socket, zero-copy where the rules
 * say so (the same as the general path's: policy state, threshold, pinned cap), and account
 * it. Returns (slot << DG_SLOT_SHIFT) | flags for a zero-copy datagram (its write resolves
 * later), DG_F_COPY | flags for a copied one (done), DG_DECLINED, DG_TRUNCATED, -errno
 * (a zero-copy send failed) or -errno - DG_COPY_ERRNO (a copying one): nothing was accounted,
 * the general path takes over. */
static int64_t dgram_send(zc_dgram *d, const char *buf, int64_t n, int allow_zc) {
    int zerocopy, flags = 0;
    ssize_t sent;
    int64_t slot;
    if (d->blocked || n > d->max_size) return DG_DECLINED;
    zerocopy = allow_zc && d->zerocopy && n >= d->threshold;
    if (zerocopy && d->t->pinned >= d->max_pinned) return DG_DECLINED; /* copied: Python */
    sent = send(d->fd, buf, (size_t)n, zerocopy ? MSG_ZEROCOPY : 0);
    if (sent < 0) return zerocopy ? -errno : -errno - DG_COPY_ERRNO;
    if (sent != n) return DG_TRUNCATED;
    if (!zerocopy) {
        d->copy_sends++;
        d->copy_bytes += n;
        return DG_F_COPY;
    }
    slot = zc_sent_whole(d->t, n, 1);
    if (slot < 0) return slot; /* out of memory: the id was used, the transport fails */
    d->zc_sends++;
    d->zc_bytes += n;
    if (d->t->pinned > d->peak_pinned_bytes) d->peak_pinned_bytes = d->t->pinned;
    if (++d->since_drain >= d->drain_every) flags = zc_dgram_drain(d, 64);
    if (!d->paused && d->t->pinned > d->high_water) flags |= DG_F_PAUSE;
    return (slot << DG_SLOT_SHIFT) | flags;
}

int64_t zc_dgram_send(zc_dgram *d, const char *buf, int64_t n) { return dgram_send(d, buf, n, 1); }

/* The same, never zero-copy (sendto() of a buffer the caller may change once it returns). */
int64_t zc_dgram_send_copy(zc_dgram *d, const char *buf, int64_t n) { return dgram_send(d, buf, n, 0); }
