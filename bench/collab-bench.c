/*
 * collab-bench: a load generator for ngx_http_collab_module (collab.v1 over WebSocket) and,
 * with the same workload, for nchan's WebSocket pub/sub.
 *
 *   S subscriber sessions spread over K documents (subscriber i joins doc i mod K),
 *   P publisher sessions (publisher p owns the docs d with d mod P == p) sending deltas of
 *   B bytes at an aggregate, evenly paced rate R for D seconds (message k leaves at
 *   t0 + k/R from publisher k mod P), every delta carrying its send time (CLOCK_MONOTONIC, us).
 *
 * Every delivered delta gives latency = receive time - send time. Per subscriber the
 * document's seq (collab) or the per-document counter in the payload (nchan) must grow by
 * exactly one: anything lower is a duplicate, anything higher a gap (order violation).
 * Expected deliveries = sum over docs of (acked deltas (collab) / sent messages (nchan)) x
 * (subscribed sessions of the doc); loss = expected - delivered.
 *
 * Sessions are spread over worker processes (--procs, raised automatically when the
 * descriptor limit requires it); a coordinator process drives the phases through shared
 * memory: connect -> (nchan: probe barrier) -> run -> drain -> done.
 *
 * Dependencies: libc and libcrypto (SHA-1 for Sec-WebSocket-Accept, RAND_bytes for seeds).
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAXPROCS   16
#define NBUCKETS   (1024 + 40 * 64)
#define SCRATCH    (512 * 1024)
#define MAXCPU     16

enum { MODE_COLLAB, MODE_NCHAN };
enum { PH_INIT, PH_CONNECT, PH_PROBE, PH_RUN, PH_DRAIN, PH_DONE };
enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_READY, ST_FAILED, ST_CLOSED };
enum { ROLE_SUB, ROLE_PUB };

/* ------------------------------------------------------------------------------------------ */
/* options */

static struct {
    int mode;
    const char *host;
    int port;
    const char *path;         /* collab endpoint */
    const char *sub_path;     /* nchan: subscriber location prefix, channel appended */
    const char *pub_path;     /* nchan: publisher location prefix */
    int subs, docs, pubs;
    double rate, duration;
    int size;
    const char *prefix;
    const char *label;
    int nginx_pid;
    const char *pid_file;
    int procs;
    int src_ips, src_base;
    int conc;
    double connect_timeout, drain, hold, settle;
    int quiet;
    int json_only;
    int connect_only;
    int ncpu;                 /* --cpu NAME=PID: processes whose CPU time is measured */
    const char *cpu_name[MAXCPU];
    int cpu_pid[MAXCPU];
} opt = {
    .mode = MODE_COLLAB, .host = "127.0.0.1", .port = 8080, .path = "/collab",
    .sub_path = "/ps/", .pub_path = "/pub/",
    .subs = 100, .docs = 10, .pubs = 10, .rate = 100, .duration = 5, .size = 256,
    .prefix = NULL, .label = "", .nginx_pid = 0, .pid_file = NULL, .procs = 0,
    .src_ips = 4, .src_base = 2, .conc = 256, .connect_timeout = 60, .drain = 5, .hold = 1,
    .settle = 1, .quiet = 0, .json_only = 0,
};

/* ------------------------------------------------------------------------------------------ */
/* shared state */

typedef struct {
    uint64_t hist[NBUCKETS];
    uint64_t lat_count, lat_max, lat_sum;
    uint64_t delivered, dups, gaps, gap_events, other_msgs;
    uint64_t sessions_ok, connect_fail, disconnects, resyncs, errors;
    uint64_t probed;
    uint64_t sent, acks, nacks, pub_rx;
    uint64_t pace_lag_max, pace_lag_sum, backlog_max;
    int64_t  last_delivery_us;
    int      ready, finished;
    char     fail_reason[160];
    char     nack_sample[200];
} wstats_t;

typedef struct {
    volatile int phase;
    volatile int64_t t0_us;
    volatile int64_t t_end_us;
    wstats_t w[MAXPROCS];
    /* followed by: uint64_t doc_subs[K], doc_sent[K], doc_acked[K] */
} shm_t;

static shm_t *shm;
static uint64_t *doc_subs, *doc_sent, *doc_acked;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "collab-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static int hist_index(uint64_t v)
{
    if (v < 1024) return (int) v;
    int e = 63 - __builtin_clzll(v);              /* >= 10 */
    int sub = (int) ((v >> (e - 6)) & 63);
    int i = 1024 + (e - 10) * 64 + sub;
    return i < NBUCKETS ? i : NBUCKETS - 1;
}

static uint64_t hist_value(int i)
{
    if (i < 1024) return (uint64_t) i;
    int e = (i - 1024) / 64 + 10, sub = (i - 1024) % 64;
    uint64_t lo = ((uint64_t) 1 << e) + ((uint64_t) sub << (e - 6));
    return lo + ((uint64_t) 1 << (e - 6)) / 2;
}

/* ------------------------------------------------------------------------------------------ */
/* per worker */

typedef struct conn {
    int fd;
    uint8_t state, role;
    uint8_t subscribed;      /* collab subscriber: got `subscribed` */
    uint8_t probed;
    int doc;                 /* subscriber's doc, nchan publisher's doc */
    int pub;                 /* publisher index */
    int64_t t_start;
    int64_t last;            /* last seq / counter seen */
    char *rbuf; size_t rlen, rcap;
    char *wbuf; size_t wlen, wcap;
    char *frag; size_t flen, fcap;  /* fragmented message being reassembled */
    char key[25];
    char epoch[20];
} conn_t;

static int W;                /* worker index */
static wstats_t *ws;
static int ep;
static char *scratch;        /* read scratch */
static char *obuf;           /* frame build buffer */
static uint64_t rng_state;
static struct sockaddr_in server_addr;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return rng_state = x;
}

static void b64(const unsigned char *in, int n, char *out)
{
    EVP_EncodeBlock((unsigned char *) out, in, n);
}

static void set_fail(const char *fmt, ...)
{
    if (ws->fail_reason[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ws->fail_reason, sizeof(ws->fail_reason), fmt, ap);
    va_end(ap);
}

static void conn_close(conn_t *c, int st)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->state = st;
    free(c->rbuf); c->rbuf = NULL; c->rlen = c->rcap = 0;
    free(c->wbuf); c->wbuf = NULL; c->wlen = c->wcap = 0;
    free(c->frag); c->frag = NULL; c->flen = c->fcap = 0;
}

static void buf_append(char **b, size_t *len, size_t *cap, const char *d, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        while (nc < *len + n) nc *= 2;
        *b = realloc(*b, nc);
        if (!*b) die("out of memory");
        *cap = nc;
    }
    memcpy(*b + *len, d, n);
    *len += n;
}

static int flush_w(conn_t *c)
{
    while (c->wlen) {
        ssize_t n = write(c->fd, c->wbuf, c->wlen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            return -1;
        }
        memmove(c->wbuf, c->wbuf + n, c->wlen - n);
        c->wlen -= n;
    }
    return 0;
}

static int send_raw(conn_t *c, const char *d, size_t n)
{
    if (c->wlen == 0) {
        ssize_t w = write(c->fd, d, n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) return -1;
            w = 0;
        }
        d += w; n -= w;
        if (n == 0) return 0;
    }
    buf_append(&c->wbuf, &c->wlen, &c->wcap, d, n);
    if (c->wlen > ws->backlog_max) ws->backlog_max = c->wlen;
    return flush_w(c);
}

/* a masked client frame */
static int send_frame(conn_t *c, int opcode, const char *p, size_t n)
{
    size_t h = 0;
    obuf[h++] = (char) (0x80 | opcode);
    if (n < 126) {
        obuf[h++] = (char) (0x80 | n);
    } else if (n < 65536) {
        obuf[h++] = (char) (0x80 | 126);
        obuf[h++] = (char) (n >> 8); obuf[h++] = (char) n;
    } else {
        obuf[h++] = (char) (0x80 | 127);
        for (int i = 7; i >= 0; i--) obuf[h++] = (char) ((uint64_t) n >> (i * 8));
    }
    uint32_t m = (uint32_t) rnd();
    unsigned char mk[4];
    memcpy(mk, &m, 4);
    memcpy(obuf + h, mk, 4); h += 4;
    if (h + n > SCRATCH) return -1;
    for (size_t i = 0; i < n; i++) obuf[h + i] = (char) (p[i] ^ mk[i & 3]);
    return send_raw(c, obuf, h + n);
}

static void doc_name(char *out, size_t sz, int d)
{
    snprintf(out, sz, "%s-%d", opt.prefix, d);
}

static int src_ip_index;

static int conn_start(conn_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { set_fail("socket: %s", strerror(errno)); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.src_ips > 0) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        int last = opt.src_base + (src_ip_index++ % opt.src_ips);
        sa.sin_addr.s_addr = htonl((127u << 24) | (uint32_t) (last & 255));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
            set_fail("bind 127.0.0.%d: %s", last, strerror(errno));
            close(fd);
            return -1;
        }
    }
    c->fd = fd;
    c->t_start = now_us();
    c->state = ST_CONNECTING;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *) &server_addr, sizeof(server_addr)) < 0
        && errno != EINPROGRESS) {
        set_fail("connect: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static int send_handshake(conn_t *c)
{
    unsigned char k[16];
    for (int i = 0; i < 16; i++) k[i] = (unsigned char) rnd();
    b64(k, 16, c->key);
    char path[300], dn[160];
    if (opt.mode == MODE_COLLAB) {
        snprintf(path, sizeof(path), "%s", opt.path);
    } else {
        doc_name(dn, sizeof(dn), c->doc);
        snprintf(path, sizeof(path), "%s%s", c->role == ROLE_SUB ? opt.sub_path : opt.pub_path, dn);
    }
    char req[1024];
    int n = snprintf(req, sizeof(req),
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
        path, opt.host, opt.port, c->key,
        opt.mode == MODE_COLLAB ? "Sec-WebSocket-Protocol: collab.v1\r\n" : "");
    c->state = ST_HANDSHAKE;
    return send_raw(c, req, n);
}

static void session_failed(conn_t *c, const char *why);

static void send_subscribe(conn_t *c, int with_since)
{
    char dn[160], m[400];
    int n;
    doc_name(dn, sizeof(dn), c->doc);
    if (with_since && c->epoch[0])
        n = snprintf(m, sizeof(m), "{\"type\":\"subscribe\",\"doc\":\"%s\",\"since\":%" PRId64
                     ",\"epoch\":\"%s\"}", dn, c->last, c->epoch);
    else
        n = snprintf(m, sizeof(m), "{\"type\":\"subscribe\",\"doc\":\"%s\"}", dn);
    if (send_frame(c, 1, m, n) < 0) session_failed(c, "write");
}

/* ------------------------------------------------------------------------------------------ */
/* the sessions of this worker */

static conn_t *subs;       /* this worker's subscribers */
static int nsubs, sub_lo;  /* global index of subs[0] */
static conn_t *pubs;       /* worker 0: collab: P, nchan: K (one per doc) */
static int npubs;
static int **pub_docs;     /* docs of publisher p */
static int *pub_ndocs;
static uint64_t *pub_j;    /* messages sent by publisher p */
static uint64_t *doc_n;    /* nchan: per-doc counter */
static int pending_ready;  /* sessions not yet ready or failed */
static int inflight;       /* sessions started, not yet ready or failed */

static void session_ready(conn_t *c)
{
    if (c->state == ST_READY) return;
    c->state = ST_READY;
    ws->sessions_ok++;
    pending_ready--;
    inflight--;
    if (c->role == ROLE_SUB && !opt.connect_only) __atomic_fetch_add(&doc_subs[c->doc], 1, __ATOMIC_RELAXED);
}

static void session_failed(conn_t *c, const char *why)
{
    int was = c->state;
    if (was == ST_FAILED || was == ST_CLOSED) return;
    if (was == ST_READY) {
        ws->disconnects++;
        if (c->role == ROLE_SUB) __atomic_fetch_sub(&doc_subs[c->doc], 1, __ATOMIC_RELAXED);
        set_fail("%s closed: %s", c->role == ROLE_SUB ? "subscriber" : "publisher", why);
        conn_close(c, ST_CLOSED);
    } else {
        ws->connect_fail++;
        pending_ready--;
        if (was != ST_IDLE) inflight--;
        set_fail("connect failed: %s", why);
        conn_close(c, ST_FAILED);
    }
}

static const char *find(const char *h, size_t hn, const char *n)
{
    return memmem(h, hn, n, strlen(n));
}

static int64_t num_after(const char *h, size_t hn, const char *key, int *ok)
{
    const char *p = find(h, hn, key);
    *ok = 0;
    if (!p) return 0;
    p += strlen(key);
    const char *e = h + hn;
    int neg = 0;
    if (p < e && *p == '-') { neg = 1; p++; }
    if (p >= e || !isdigit((unsigned char) *p)) return 0;
    int64_t v = 0;
    while (p < e && isdigit((unsigned char) *p)) v = v * 10 + (*p++ - '0');
    *ok = 1;
    return neg ? -v : v;
}

static void record_latency(int64_t t_sent, int64_t now)
{
    int64_t l = now - t_sent;
    if (l < 0) l = 0;
    ws->hist[hist_index((uint64_t) l)]++;
    ws->lat_count++;
    ws->lat_sum += (uint64_t) l;
    if ((uint64_t) l > ws->lat_max) ws->lat_max = (uint64_t) l;
    ws->last_delivery_us = now;
}

static void check_order(conn_t *c, int64_t seq)
{
    if (seq <= c->last) { ws->dups++; return; }
    if (seq != c->last + 1) { ws->gaps += (uint64_t) (seq - c->last - 1); ws->gap_events++; }
    c->last = seq;
    ws->delivered++;
}

static void on_message(conn_t *c, const char *m, size_t n, int64_t now)
{
    int ok;
    if (opt.mode == MODE_NCHAN) {
        if (c->role == ROLE_PUB) {
            ws->pub_rx++;
            if (shm->phase >= PH_RUN) ws->acks++;     /* not the answers to probes */
            return;
        }
        if (find(m, n, "\"probe\"")) {
            if (!c->probed) { c->probed = 1; ws->probed++; }
            return;
        }
        int64_t cnt = num_after(m, n, "\"n\":", &ok);
        if (!ok) { ws->other_msgs++; return; }
        int64_t t = num_after(m, n, "\"t\":", &ok);
        check_order(c, cnt);
        if (ok) record_latency(t, now);
        return;
    }
    const char *tp = find(m, n, "\"type\":\"");
    if (!tp) { ws->other_msgs++; return; }
    tp += 8;
    size_t rest = n - (size_t) (tp - m);
#define IS(s) (rest > sizeof(s) - 1 && memcmp(tp, s "\"", sizeof(s)) == 0)
    if (IS("delta")) {
        int64_t seq = num_after(m, n, "\"seq\":", &ok);
        if (!ok) { ws->other_msgs++; return; }
        const char *d = find(m, n, "\"data\":");
        int64_t t = 0;
        int tok = 0;
        if (d) t = num_after(d, n - (size_t) (d - m), "\"t\":", &tok);
        if (c->role == ROLE_SUB && c->subscribed) {
            uint64_t before = ws->delivered;
            check_order(c, seq);
            if (tok && ws->delivered != before) record_latency(t, now);
        }
    } else if (IS("ack")) {
        ws->acks++;
        const char *d = find(m, n, "\"doc\":\"");
        if (d) {
            d += 7;
            size_t pl = strlen(opt.prefix);
            if ((size_t) (m + n - d) > pl + 1 && memcmp(d, opt.prefix, pl) == 0 && d[pl] == '-') {
                int dd = atoi(d + pl + 1);
                if (dd >= 0 && dd < opt.docs) __atomic_fetch_add(&doc_acked[dd], 1, __ATOMIC_RELAXED);
            }
        }
    } else if (IS("nack")) {
        ws->nacks++;
        if (!ws->nack_sample[0]) {
            size_t k = n < sizeof(ws->nack_sample) - 1 ? n : sizeof(ws->nack_sample) - 1;
            memcpy(ws->nack_sample, m, k);
            ws->nack_sample[k] = 0;
        }
    } else if (IS("subscribed")) {
        int64_t head = num_after(m, n, "\"seq\":", &ok);
        const char *st = find(m, n, "\"state\":{");
        int sok = 0;
        int64_t sseq = st ? num_after(st, n - (size_t) (st - m), "\"seq\":", &sok) : 0;
        const char *e = find(m, n, "\"epoch\":\"");
        if (e) {
            e += 9;
            size_t k = 0;
            while (k < sizeof(c->epoch) - 1 && e + k < m + n && e[k] != '"') { c->epoch[k] = e[k]; k++; }
            c->epoch[k] = 0;
        }
        if (!c->subscribed) {
            c->last = sok ? sseq : (ok ? head : 0);
            c->subscribed = 1;
            if (c->state == ST_OPEN) session_ready(c);
        } else if (sok && sseq > c->last) {
            /* a resubscribe answered with a snapshot: deltas up to sseq are skipped */
            ws->gaps += (uint64_t) (sseq - c->last);
            ws->gap_events++;
            c->last = sseq;
        }
    } else if (IS("welcome")) {
        if ((c->role == ROLE_PUB || opt.connect_only) && c->state == ST_OPEN) session_ready(c);
    } else if (IS("resync")) {
        ws->resyncs++;
        send_subscribe(c, 1);
    } else if (IS("error") || IS("unsubscribed")) {
        ws->errors++;
        if (!ws->nack_sample[0]) {
            size_t k = n < sizeof(ws->nack_sample) - 1 ? n : sizeof(ws->nack_sample) - 1;
            memcpy(ws->nack_sample, m, k);
            ws->nack_sample[k] = 0;
        }
    } else {
        ws->other_msgs++;
    }
#undef IS
}

/* parse frames in buf[0..len); returns bytes consumed, -1 to close */
static ssize_t parse_frames(conn_t *c, char *buf, size_t len, int64_t now)
{
    size_t off = 0;
    while (len - off >= 2) {
        unsigned char b0 = (unsigned char) buf[off], b1 = (unsigned char) buf[off + 1];
        int fin = b0 & 0x80, op = b0 & 0x0f, masked = b1 & 0x80;
        uint64_t pl = b1 & 0x7f;
        size_t h = 2;
        if (pl == 126) {
            if (len - off < 4) break;
            pl = ((uint64_t) (unsigned char) buf[off + 2] << 8) | (unsigned char) buf[off + 3];
            h = 4;
        } else if (pl == 127) {
            if (len - off < 10) break;
            pl = 0;
            for (int i = 0; i < 8; i++) pl = (pl << 8) | (unsigned char) buf[off + 2 + i];
            h = 10;
        }
        if (masked) h += 4;
        if (pl > (64u << 20)) { set_fail("frame too large"); return -1; }
        if (len - off < h + pl) break;
        char *p = buf + off + h;
        if (masked) {
            unsigned char *mk = (unsigned char *) buf + off + h - 4;
            for (uint64_t i = 0; i < pl; i++) p[i] ^= (char) mk[i & 3];
        }
        off += h + pl;
        switch (op) {
        case 0:                     /* continuation */
            buf_append(&c->frag, &c->flen, &c->fcap, p, pl);
            if (fin) { on_message(c, c->frag, c->flen, now); c->flen = 0; }
            break;
        case 1: case 2:
            if (!fin) { c->flen = 0; buf_append(&c->frag, &c->flen, &c->fcap, p, pl); break; }
            on_message(c, p, pl, now);
            break;
        case 8: {
            char why[80] = "close frame";
            if (pl >= 2) {
                int code = ((unsigned char) p[0] << 8) | (unsigned char) p[1];
                snprintf(why, sizeof(why), "close %d %.*s", code, (int) (pl - 2 > 40 ? 40 : pl - 2), p + 2);
            }
            session_failed(c, why);
            return -1;
        }
        case 9:
            if (send_frame(c, 10, p, pl) < 0) return -1;
            break;
        default:
            break;
        }
        if (c->fd < 0) return -1;
    }
    return (ssize_t) off;
}

static void on_handshake(conn_t *c, int64_t now)
{
    char *e = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!e) {
        if (c->rlen > 16384) session_failed(c, "handshake response too long");
        return;
    }
    size_t hl = (size_t) (e - c->rbuf) + 4;
    if (c->rlen < 12 || memcmp(c->rbuf + 9, "101", 3) != 0) {
        char why[80];
        snprintf(why, sizeof(why), "status %.3s", c->rlen >= 12 ? c->rbuf + 9 : "???");
        session_failed(c, why);
        return;
    }
    /* check Sec-WebSocket-Accept */
    char acc[64], want[64];
    unsigned char sha[20];
    char kb[64];
    int kn = snprintf(kb, sizeof(kb), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
    SHA1((unsigned char *) kb, (size_t) kn, sha);
    b64(sha, 20, want);
    acc[0] = 0;
    for (char *l = c->rbuf; l < c->rbuf + hl; ) {
        char *nl = memmem(l, (size_t) (c->rbuf + hl - l), "\r\n", 2);
        if (!nl) break;
        if (nl - l > 22 && strncasecmp(l, "Sec-WebSocket-Accept:", 21) == 0) {
            char *v = l + 21;
            while (*v == ' ') v++;
            size_t vn = (size_t) (nl - v);
            if (vn < sizeof(acc)) { memcpy(acc, v, vn); acc[vn] = 0; }
        }
        l = nl + 2;
    }
    if (strcmp(acc, want) != 0) { session_failed(c, "bad Sec-WebSocket-Accept"); return; }
    c->state = ST_OPEN;
    size_t rest = c->rlen - hl;
    memmove(c->rbuf, c->rbuf + hl, rest);
    c->rlen = rest;
    if (opt.mode == MODE_COLLAB) {
        if (c->role == ROLE_SUB && !opt.connect_only) send_subscribe(c, 0);
    } else {
        session_ready(c);     /* nchan subscribes on the upgrade itself; the probe confirms */
    }
    if (c->fd >= 0 && c->rlen) {
        ssize_t k = parse_frames(c, c->rbuf, c->rlen, now);
        if (k < 0) { if (c->fd >= 0) session_failed(c, "protocol"); return; }
        memmove(c->rbuf, c->rbuf + k, c->rlen - (size_t) k);
        c->rlen -= (size_t) k;
    }
}

static void on_event(conn_t *c, uint32_t evs)
{
    int64_t now = now_us();
    if (c->fd < 0) return;
    if (c->state == ST_CONNECTING) {
        if (!(evs & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { session_failed(c, strerror(err)); return; }
        if (send_handshake(c) < 0) { session_failed(c, "write handshake"); return; }
    }
    if ((evs & EPOLLOUT) && c->wlen) {
        if (flush_w(c) < 0) { session_failed(c, "write"); return; }
    }
    if (evs & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            size_t have = 0;
            if (c->state != ST_HANDSHAKE && c->rlen) {
                memcpy(scratch, c->rbuf, c->rlen);
                have = c->rlen;
                c->rlen = 0;
            }
            if (c->state == ST_HANDSHAKE) {
                char tmp[8192];
                ssize_t n = read(c->fd, tmp, sizeof(tmp));
                if (n == 0) { session_failed(c, "EOF during handshake"); return; }
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR) return;
                    session_failed(c, strerror(errno)); return;
                }
                buf_append(&c->rbuf, &c->rlen, &c->rcap, tmp, (size_t) n);
                on_handshake(c, now);
                if (c->fd < 0) return;
                if ((size_t) n < sizeof(tmp)) return;
                continue;
            }
            ssize_t n = read(c->fd, scratch + have, SCRATCH - have);
            if (n == 0) {
                session_failed(c, "EOF");
                return;
            }
            if (n < 0) {
                if (have) buf_append(&c->rbuf, &c->rlen, &c->rcap, scratch, have);
                if (errno == EAGAIN || errno == EINTR) return;
                session_failed(c, strerror(errno));
                return;
            }
            size_t tot = have + (size_t) n;
            ssize_t k = parse_frames(c, scratch, tot, now);
            if (c->fd < 0) return;
            if (k < 0) { session_failed(c, "protocol"); return; }
            if ((size_t) k < tot) buf_append(&c->rbuf, &c->rlen, &c->rcap, scratch + k, tot - (size_t) k);
            if ((size_t) n < SCRATCH - have) return;   /* drained (stream socket, edge triggered) */
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* publishing */

static char *padding;

static void publish_one(uint64_t k, int64_t sched)
{
    int p = (int) (k % (uint64_t) opt.pubs);
    uint64_t j = pub_j[p]++;
    int d = pub_docs[p][j % (uint64_t) pub_ndocs[p]];
    conn_t *c = opt.mode == MODE_COLLAB ? &pubs[p] : &pubs[d];
    if (c->state != ST_READY || c->fd < 0) return;
    char msg[65536 + 512], dn[160];
    int64_t t = now_us();
    int64_t lag = t - sched;
    if (lag > 0) {
        ws->pace_lag_sum += (uint64_t) lag;
        if ((uint64_t) lag > ws->pace_lag_max) ws->pace_lag_max = (uint64_t) lag;
    }
    int n;
    doc_name(dn, sizeof(dn), d);
    if (opt.mode == MODE_COLLAB)
        n = snprintf(msg, 512, "{\"type\":\"delta\",\"doc\":\"%s\",\"id\":\"%s-%d-%" PRIu64
                     "\",\"data\":{\"t\":%" PRId64 ",\"p\":\"", dn, opt.prefix, p, j, t);
    else
        n = snprintf(msg, 512, "{\"d\":%d,\"n\":%" PRIu64 ",\"t\":%" PRId64 ",\"p\":\"",
                     d, ++doc_n[d], t);
    const char *tail = opt.mode == MODE_COLLAB ? "\"}}" : "\"}";
    int tl = (int) strlen(tail);
    int pad = opt.size - n - tl;
    if (pad < 0) pad = 0;
    if (pad > 65536) pad = 65536;
    memcpy(msg + n, padding, (size_t) pad);
    n += pad;
    memcpy(msg + n, tail, (size_t) tl);
    n += tl;
    if (send_frame(c, 1, msg, (size_t) n) < 0) { session_failed(c, "write"); return; }
    ws->sent++;
    __atomic_fetch_add(&doc_sent[d], 1, __ATOMIC_RELAXED);
}

static void send_probes(void)
{
    char m[128];
    for (int d = 0; d < opt.docs; d++) {
        conn_t *c = &pubs[d];
        if (c->state != ST_READY) continue;
        int n = snprintf(m, sizeof(m), "{\"probe\":1,\"d\":%d}", d);
        if (send_frame(c, 1, m, (size_t) n) < 0) session_failed(c, "write");
    }
}

/* ------------------------------------------------------------------------------------------ */

static void worker_main(int w, int nprocs)
{
    W = w;
    ws = &shm->w[w];
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    prctl(PR_SET_TIMERSLACK, 1UL);     /* pacing: wake up on time, not 50 us late */
    if (getppid() == 1) _exit(1);
    unsigned char seed[8];
    RAND_bytes(seed, 8);
    memcpy(&rng_state, seed, 8);
    rng_state |= 1;
    scratch = malloc(SCRATCH);
    obuf = malloc(SCRATCH);
    padding = malloc(65536);
    memset(padding, 'x', 65536);
    ep = epoll_create1(EPOLL_CLOEXEC);
    src_ip_index = w * 7919;

    int per = (opt.subs + nprocs - 1) / nprocs;
    sub_lo = w * per;
    int hi = sub_lo + per > opt.subs ? opt.subs : sub_lo + per;
    nsubs = hi > sub_lo ? hi - sub_lo : 0;
    subs = calloc((size_t) (nsubs ? nsubs : 1), sizeof(conn_t));
    for (int i = 0; i < nsubs; i++) {
        subs[i].fd = -1; subs[i].role = ROLE_SUB; subs[i].doc = (sub_lo + i) % opt.docs;
        subs[i].state = ST_IDLE;
    }
    npubs = 0;
    if (w == 0 && opt.pubs > 0) {
        npubs = opt.mode == MODE_COLLAB ? opt.pubs : opt.docs;
        pubs = calloc((size_t) npubs, sizeof(conn_t));
        for (int i = 0; i < npubs; i++) {
            pubs[i].fd = -1; pubs[i].role = ROLE_PUB; pubs[i].state = ST_IDLE;
            pubs[i].pub = opt.mode == MODE_COLLAB ? i : i % opt.pubs;
            pubs[i].doc = opt.mode == MODE_COLLAB ? -1 : i;
        }
        pub_docs = calloc((size_t) opt.pubs, sizeof(int *));
        pub_ndocs = calloc((size_t) opt.pubs, sizeof(int));
        pub_j = calloc((size_t) opt.pubs, sizeof(uint64_t));
        doc_n = calloc((size_t) opt.docs, sizeof(uint64_t));
        for (int p = 0; p < opt.pubs; p++) {
            pub_docs[p] = calloc((size_t) (opt.docs / opt.pubs + 1), sizeof(int));
            for (int d = p; d < opt.docs; d += opt.pubs) pub_docs[p][pub_ndocs[p]++] = d;
        }
    }
    pending_ready = nsubs + npubs;

    while (shm->phase < PH_CONNECT) usleep(1000);

    int next_pub = 0, next_sub = 0;
    uint64_t k = 0;
    int64_t last_probe = 0, last_scan = now_us();
    struct epoll_event evs[1024];

    for (;;) {
        int ph = __atomic_load_n(&shm->phase, __ATOMIC_ACQUIRE);
        if (ph == PH_DONE) break;
        int64_t now = now_us();
        long timeout_ns = 10 * 1000000L;

        if (ph == PH_CONNECT) {
            if (now - last_scan > 200000) {
                int64_t lim = (int64_t) (opt.connect_timeout * 1e6);
                for (int i = 0; i < next_pub; i++)
                    if (pubs[i].state > ST_IDLE && pubs[i].state < ST_READY && now - pubs[i].t_start > lim)
                        session_failed(&pubs[i], "timeout");
                for (int i = 0; i < next_sub; i++)
                    if (subs[i].state > ST_IDLE && subs[i].state < ST_READY && now - subs[i].t_start > lim)
                        session_failed(&subs[i], "timeout");
                last_scan = now;
            }
            /* publishers first, then subscribers, at most opt.conc handshakes at once */
            while (inflight < opt.conc && next_pub < npubs) {
                conn_t *cc = &pubs[next_pub++];
                inflight++;
                cc->state = ST_CONNECTING;
                if (conn_start(cc) < 0) { cc->state = ST_CONNECTING; session_failed(cc, "connect"); }
            }
            while (inflight < opt.conc && next_sub < nsubs && next_pub >= npubs) {
                conn_t *cc = &subs[next_sub++];
                inflight++;
                cc->state = ST_CONNECTING;
                if (conn_start(cc) < 0) { cc->state = ST_CONNECTING; session_failed(cc, "connect"); }
            }
            if (!ws->ready && next_pub >= npubs && next_sub >= nsubs && pending_ready <= 0)
                __atomic_store_n(&ws->ready, 1, __ATOMIC_RELEASE);
            timeout_ns = 2 * 1000000L;
        } else if (ph == PH_PROBE && w == 0) {
            if (now - last_probe > 300000) { send_probes(); last_probe = now; }
        } else if ((ph == PH_RUN || ph == PH_DRAIN) && w == 0 && opt.rate > 0) {
            int64_t t0 = shm->t0_us, tend = shm->t_end_us;
            for (;;) {
                int64_t sched = t0 + (int64_t) ((double) k * 1e6 / opt.rate);
                if (sched >= tend) break;
                now = now_us();
                if (sched > now) {
                    long ns = (long) (sched - now) * 1000L;
                    if (ns < timeout_ns) timeout_ns = ns;
                    break;
                }
                publish_one(k, sched);
                k++;
            }
        }

        struct timespec ts = { .tv_sec = 0, .tv_nsec = timeout_ns };
        int n = epoll_pwait2(ep, evs, 1024, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ENOSYS) {
                n = epoll_wait(ep, evs, 1024, (int) (timeout_ns / 1000000L));
                if (n < 0) continue;
            } else {
                die("epoll: %s", strerror(errno));
            }
        }
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
    }
    __atomic_store_n(&ws->finished, 1, __ATOMIC_RELEASE);
    _exit(0);
}

/* ------------------------------------------------------------------------------------------ */
/* coordinator */

static int master_pid(void)
{
    if (opt.nginx_pid) return opt.nginx_pid;
    if (!opt.pid_file) return 0;
    FILE *f = fopen(opt.pid_file, "r");
    if (!f) return 0;
    int p = 0;
    if (fscanf(f, "%d", &p) != 1) p = 0;
    fclose(f);
    return p;
}

/* sum of VmRSS and Pss (kB) of the children of pid */
static int workers_mem(int mpid, long *rss_kb, long *pss_kb, int *nworkers)
{
    *rss_kb = *pss_kb = 0;
    *nworkers = 0;
    if (mpid <= 0) return -1;
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char) e->d_name[0])) continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')');
        if (!rp) continue;
        char st;
        int ppid;
        if (sscanf(rp + 2, "%c %d", &st, &ppid) != 2 || ppid != mpid || st == 'Z') continue;
        snprintf(path, sizeof(path), "/proc/%s/status", e->d_name);
        f = fopen(path, "r");
        if (!f) continue;
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (strncmp(line, "VmRSS:", 6) == 0) *rss_kb += atol(line + 6);
        fclose(f);
        snprintf(path, sizeof(path), "/proc/%s/smaps_rollup", e->d_name);
        f = fopen(path, "r");
        if (f) {
            while (fgets(line, sizeof(line), f))
                if (strncmp(line, "Pss:", 4) == 0) *pss_kb += atol(line + 4);
            fclose(f);
        }
        (*nworkers)++;
    }
    closedir(d);
    return 0;
}

/* CPU time (utime + stime, clock ticks) of one process, -1 if it is gone */
static long long proc_cpu(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    if (!rp) return -1;
    unsigned long long ut, st;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long) (ut + st);
}

/* CPU ticks of the children of mpid (the nginx workers) */
static long long children_cpu(int mpid)
{
    long long t = 0;
    if (mpid <= 0) return 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char) e->d_name[0])) continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')');
        int ppid;
        if (!rp || sscanf(rp + 2, "%*c %d", &ppid) != 1 || ppid != mpid) continue;
        long long c = proc_cpu(atoi(e->d_name));
        if (c > 0) t += c;
    }
    closedir(d);
    return t;
}

/* busy and total ticks of the whole machine (all CPUs) */
static void machine_cpu(long long *busy, long long *total)
{
    unsigned long long v[8] = {0};
    *busy = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7]) == 8) {
        for (int i = 0; i < 8; i++) *total += (long long) v[i];
        *busy = *total - (long long) (v[3] + v[4]);
    }
    fclose(f);
}

typedef struct {
    int64_t t_us;
    long long nginx, gen, busy, total;
    long long named[MAXCPU];
} cpu_sample_t;

static void cpu_sample(cpu_sample_t *s, int mpid, pid_t *kp, int nk)
{
    s->t_us = now_us();
    s->nginx = children_cpu(mpid);
    s->gen = proc_cpu(getpid());
    for (int i = 0; i < nk; i++) { long long c = proc_cpu(kp[i]); if (c > 0) s->gen += c; }
    for (int i = 0; i < opt.ncpu; i++) s->named[i] = proc_cpu(opt.cpu_pid[i]);
    machine_cpu(&s->busy, &s->total);
}

/* appends ,"cpu_window_s":W,"cpu_nginx":%,... to out: % of one CPU over the window */
static void cpu_json(char *out, size_t sz, const cpu_sample_t *a, const cpu_sample_t *b, long ncpus)
{
    double w = (double) (b->t_us - a->t_us) / 1e6, hz = (double) sysconf(_SC_CLK_TCK);
    size_t n = 0;
    out[0] = 0;
    if (w <= 0 || hz <= 0) return;
#define PCT(x) (100.0 * (double) (x) / hz / w)
    n += (size_t) snprintf(out + n, sz - n, ",\"cpu_window_s\":%.3f,\"cpu_nginx\":%.1f,\"cpu_gen\":%.1f", w,
                           PCT(b->nginx - a->nginx), PCT(b->gen - a->gen));
    for (int i = 0; i < opt.ncpu && n < sz; i++) {
        if (a->named[i] < 0 || b->named[i] < 0) continue;
        n += (size_t) snprintf(out + n, sz - n, ",\"cpu_%s\":%.1f", opt.cpu_name[i], PCT(b->named[i] - a->named[i]));
    }
    if (b->total > a->total && n < sz)
        snprintf(out + n, sz - n, ",\"cpu_machine\":%.1f",
                 100.0 * (double) ncpus * (double) (b->busy - a->busy) / (double) (b->total - a->total));
#undef PCT
}

static pid_t kids[MAXPROCS];
static int nkids;

static void on_signal(int s)
{
    for (int i = 0; i < nkids; i++) if (kids[i] > 0) kill(kids[i], SIGKILL);
    signal(s, SIG_DFL);
    raise(s);
}

static void sleep_us(int64_t us) { if (us > 0) usleep((useconds_t) us); }

static uint64_t sum_field(size_t off, int nprocs)
{
    uint64_t s = 0;
    for (int i = 0; i < nprocs; i++) s += *(uint64_t *) ((char *) &shm->w[i] + off);
    return s;
}
#define SUM(f) sum_field(offsetof(wstats_t, f), nprocs)

static uint64_t expected_now(void)
{
    uint64_t e = 0;
    for (int d = 0; d < opt.docs; d++) {
        uint64_t m = opt.mode == MODE_COLLAB ? __atomic_load_n(&doc_acked[d], __ATOMIC_RELAXED)
                                             : __atomic_load_n(&doc_sent[d], __ATOMIC_RELAXED);
        e += m * __atomic_load_n(&doc_subs[d], __ATOMIC_RELAXED);
    }
    return e;
}

static void usage(void)
{
    fprintf(stderr,
"usage: collab-bench [options]\n"
"  --mode collab|nchan     protocol (default collab)\n"
"  --host H --port N       server (default 127.0.0.1:8080)\n"
"  --path P                collab endpoint (default /collab)\n"
"  --sub-path P --pub-path P   nchan locations, the channel id is appended (/ps/ /pub/)\n"
"  -S N  subscribers       -K N  documents        -P N  publishers\n"
"  -R r  deltas/s (total)  -D s  seconds          -B n  bytes per delta message\n"
"  --prefix STR            document name prefix (default random)\n"
"  --nginx-pid PID | --pid-file F   nginx master: RSS of its workers is measured\n"
"  --procs N               client processes (default: as the fd limit requires)\n"
"  --src-ips N --src-base B   bind to 127.0.0.B..B+N-1 (0 = no bind; default 4, 2)\n"
"  --conc N                concurrent handshakes (256)\n"
"  --connect-timeout s (60)  --drain s (5)  --hold s (idle hold when R=0, 1)  --settle s (1)\n"
"  --connect-only          collab: sessions do not subscribe (ready at `welcome`; with -R 0)\n"
"  --label STR             copied into the JSON line\n"
"  --cpu NAME=PID          CPU of that process while publishing (+ drain), as cpu_NAME in\n"
"                          the JSON line (%% of one CPU); repeatable (16); nginx workers,\n"
"                          the generator and the machine are always measured\n"
"  --json                  print only the JSON line\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct option lo[] = {
        {"mode", 1, 0, 'm'}, {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"path", 1, 0, 1},
        {"sub-path", 1, 0, 2}, {"pub-path", 1, 0, 3}, {"prefix", 1, 0, 4}, {"nginx-pid", 1, 0, 5},
        {"pid-file", 1, 0, 6}, {"procs", 1, 0, 7}, {"src-ips", 1, 0, 8}, {"src-base", 1, 0, 9},
        {"conc", 1, 0, 10}, {"connect-timeout", 1, 0, 11}, {"drain", 1, 0, 12}, {"hold", 1, 0, 13},
        {"label", 1, 0, 14}, {"json", 0, 0, 15}, {"settle", 1, 0, 16}, {"connect-only", 0, 0, 17},
        {"cpu", 1, 0, 18},
        {"help", 0, 0, 'H'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "S:K:P:R:D:B:", lo, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "collab")) opt.mode = MODE_COLLAB;
            else if (!strcmp(optarg, "nchan")) opt.mode = MODE_NCHAN;
            else usage();
            break;
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 1: opt.path = optarg; break;
        case 2: opt.sub_path = optarg; break;
        case 3: opt.pub_path = optarg; break;
        case 4: opt.prefix = optarg; break;
        case 5: opt.nginx_pid = atoi(optarg); break;
        case 6: opt.pid_file = optarg; break;
        case 7: opt.procs = atoi(optarg); break;
        case 8: opt.src_ips = atoi(optarg); break;
        case 9: opt.src_base = atoi(optarg); break;
        case 10: opt.conc = atoi(optarg); break;
        case 11: opt.connect_timeout = atof(optarg); break;
        case 12: opt.drain = atof(optarg); break;
        case 13: opt.hold = atof(optarg); break;
        case 14: opt.label = optarg; break;
        case 15: opt.json_only = 1; break;
        case 16: opt.settle = atof(optarg); break;
        case 17: opt.connect_only = 1; break;
        case 18: {
            const char *eq = strchr(optarg, '=');
            size_t nl = eq ? (size_t) (eq - optarg) : 0;
            if (!eq || nl == 0 || nl > 32 || strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789_") != nl
                || atoi(eq + 1) <= 0)
                die("--cpu wants NAME=PID (NAME: a-z, 0-9, _), not \"%s\"", optarg);
            if (opt.ncpu == MAXCPU) die("at most %d --cpu", MAXCPU);
            opt.cpu_name[opt.ncpu] = strndup(optarg, nl);
            opt.cpu_pid[opt.ncpu++] = atoi(eq + 1);
            break;
        }
        case 'S': opt.subs = atoi(optarg); break;
        case 'K': opt.docs = atoi(optarg); break;
        case 'P': opt.pubs = atoi(optarg); break;
        case 'R': opt.rate = atof(optarg); break;
        case 'D': opt.duration = atof(optarg); break;
        case 'B': opt.size = atoi(optarg); break;
        default: usage();
        }
    }
    if (opt.docs < 1 || opt.subs < 0 || opt.pubs < 0) usage();
    if (opt.pubs > opt.docs) opt.pubs = opt.docs;
    if (opt.rate <= 0 || opt.duration <= 0) { opt.rate = 0; opt.duration = 0; }
    if (opt.rate > 0 && opt.pubs == 0) die("-R needs publishers (-P)");
    if (opt.connect_only && opt.rate > 0) die("--connect-only is for idle sessions (-R 0)");
    if (opt.src_ips < 0 || opt.src_base + opt.src_ips > 256) die("bad --src-ips/--src-base");
    if (opt.conc < 1) opt.conc = 1;
    char pfx[40];
    if (!opt.prefix) {
        unsigned char r[6];
        RAND_bytes(r, 6);
        snprintf(pfx, sizeof(pfx), "b%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
        opt.prefix = pfx;
    }

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) fprintf(stderr, "collab-bench: setrlimit: %s\n", strerror(errno));
    getrlimit(RLIMIT_NOFILE, &rl);
    long fdcap = (long) rl.rlim_cur - 64;
    long npubconns = opt.pubs ? (opt.mode == MODE_COLLAB ? opt.pubs : opt.docs) : 0;
    int nprocs = opt.procs;
    if (nprocs <= 0) nprocs = 1;
    while (nprocs < MAXPROCS && (npubconns + (opt.subs + nprocs - 1) / nprocs) > fdcap) nprocs++;
    if (npubconns + (opt.subs + nprocs - 1) / nprocs > fdcap)
        die("%d sessions do not fit in %d processes with RLIMIT_NOFILE %ld", opt.subs, MAXPROCS, (long) rl.rlim_cur);
    if (nprocs > MAXPROCS) nprocs = MAXPROCS;

    memset(&server_addr, 0, sizeof(server_addr));
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t) opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) die("--host must be an IPv4 address");

    size_t shsz = sizeof(shm_t) + 3 * sizeof(uint64_t) * (size_t) opt.docs;
    shm = mmap(NULL, shsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED) die("mmap: %s", strerror(errno));
    memset(shm, 0, shsz);
    doc_subs = (uint64_t *) (shm + 1);
    doc_sent = doc_subs + opt.docs;
    doc_acked = doc_sent + opt.docs;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int mpid = master_pid();
    long rss0 = 0, pss0 = 0, rss1 = 0, pss1 = 0, rss2 = 0, pss2 = 0;
    int nw = 0;
    if (mpid) workers_mem(mpid, &rss0, &pss0, &nw);

    for (int i = 0; i < nprocs; i++) {
        pid_t p = fork();
        if (p < 0) die("fork: %s", strerror(errno));
        if (p == 0) worker_main(i, nprocs);
        kids[nkids++] = p;
    }

    int64_t tc0 = now_us();
    __atomic_store_n(&shm->phase, PH_CONNECT, __ATOMIC_RELEASE);
    int64_t last_print = tc0;
    for (;;) {
        int all = 1;
        for (int i = 0; i < nprocs; i++) if (!__atomic_load_n(&shm->w[i].ready, __ATOMIC_ACQUIRE)) all = 0;
        if (all) break;
        int64_t now = now_us();
        if (now - tc0 > (int64_t) ((opt.connect_timeout + 30) * 1e6)) {
            fprintf(stderr, "collab-bench: connect phase did not finish\n");
            break;
        }
        if (!opt.json_only && now - last_print > 2000000) {
            fprintf(stderr, "  connecting: %" PRIu64 " ready, %" PRIu64 " failed\n", SUM(sessions_ok), SUM(connect_fail));
            last_print = now;
        }
        usleep(5000);
    }
    double connect_s = (double) (now_us() - tc0) / 1e6;
    sleep_us((int64_t) (opt.settle * 1e6));
    if (mpid) workers_mem(mpid, &rss1, &pss1, &nw);
    uint64_t sessions = SUM(sessions_ok);

    int probe_ok = 1;
    double probe_s = 0;
    if (opt.mode == MODE_NCHAN && opt.subs > 0 && opt.pubs > 0) {
        int64_t tp = now_us();
        __atomic_store_n(&shm->phase, PH_PROBE, __ATOMIC_RELEASE);
        uint64_t nsub_ok = 0;
        for (int d = 0; d < opt.docs; d++) nsub_ok += doc_subs[d];
        while (SUM(probed) < nsub_ok) {
            if (now_us() - tp > 20000000) { probe_ok = 0; break; }
            usleep(5000);
        }
        probe_s = (double) (now_us() - tp) / 1e6;
        usleep(200000);   /* probes still in flight are ignored anyway */
    }

    int64_t t0 = 0, t_end = 0, t_done = 0;
    cpu_sample_t cpu0, cpu1;
    char cpujs[1024] = "";
    if (opt.rate > 0) {
        cpu_sample(&cpu0, mpid, kids, nkids);
        t0 = now_us() + 50000;
        t_end = t0 + (int64_t) (opt.duration * 1e6);
        shm->t0_us = t0;
        shm->t_end_us = t_end;
        __atomic_store_n(&shm->phase, PH_RUN, __ATOMIC_RELEASE);
        while (now_us() < t_end) {
            usleep(20000);
            if (!opt.json_only && now_us() - last_print > 2000000) {
                fprintf(stderr, "  running: sent %" PRIu64 " acks %" PRIu64 " delivered %" PRIu64 "\n",
                        SUM(sent), SUM(acks), SUM(delivered));
                last_print = now_us();
            }
        }
        __atomic_store_n(&shm->phase, PH_DRAIN, __ATOMIC_RELEASE);
        int64_t td = now_us();
        for (;;) {
            uint64_t sent = SUM(sent), acks = SUM(acks) , nacks = SUM(nacks);
            int acked_all = opt.mode == MODE_NCHAN || acks + nacks >= sent;
            if (acked_all && SUM(delivered) >= expected_now()) break;
            if (now_us() - td > (int64_t) (opt.drain * 1e6)) break;
            usleep(2000);
        }
        t_done = now_us();
        cpu_sample(&cpu1, mpid, kids, nkids);
        cpu_json(cpujs, sizeof(cpujs), &cpu0, &cpu1, sysconf(_SC_NPROCESSORS_ONLN));
    } else {
        sleep_us((int64_t) (opt.hold * 1e6));
    }
    if (mpid) workers_mem(mpid, &rss2, &pss2, &nw);
    __atomic_store_n(&shm->phase, PH_DONE, __ATOMIC_RELEASE);
    for (int i = 0; i < nkids; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        kids[i] = 0;
    }

    /* ---- aggregate */
    uint64_t hist[NBUCKETS];
    memset(hist, 0, sizeof(hist));
    uint64_t lat_max = 0, lat_sum = 0;
    int64_t last_del = 0;
    for (int i = 0; i < nprocs; i++) {
        for (int b = 0; b < NBUCKETS; b++) hist[b] += shm->w[i].hist[b];
        if (shm->w[i].lat_max > lat_max) lat_max = shm->w[i].lat_max;
        lat_sum += shm->w[i].lat_sum;
        if (shm->w[i].last_delivery_us > last_del) last_del = shm->w[i].last_delivery_us;
    }
    uint64_t lat_n = SUM(lat_count);
    double pct[4] = {50, 90, 99, 99.9};
    uint64_t pv[4] = {0, 0, 0, 0};
    for (int q = 0; q < 4; q++) {
        if (!lat_n) break;
        uint64_t target = (uint64_t) ceil(pct[q] / 100.0 * (double) lat_n), acc = 0;
        if (target < 1) target = 1;
        for (int b = 0; b < NBUCKETS; b++) {
            acc += hist[b];
            if (acc >= target) { pv[q] = hist_value(b); break; }
        }
        if (pv[q] > lat_max) pv[q] = lat_max;
    }
    uint64_t sent = SUM(sent), acks = SUM(acks), nacks = SUM(nacks);
    uint64_t delivered = SUM(delivered), expected = expected_now();
    uint64_t lost = expected > delivered ? expected - delivered : 0;
    uint64_t dups = SUM(dups), gaps = SUM(gaps), gap_events = SUM(gap_events);
    double span = opt.duration;
    if (last_del > t0 && t0 && (double) (last_del - t0) / 1e6 > span) span = (double) (last_del - t0) / 1e6;
    double dps = span > 0 ? (double) delivered / span : 0;
    uint64_t sub_ok = 0;
    for (int d = 0; d < opt.docs; d++) sub_ok += doc_subs[d];
    long drss = rss1 - rss0, dpss = pss1 - pss0;
    double rss_per = sessions && mpid ? (double) drss * 1024.0 / (double) sessions : 0;
    double pss_per = sessions && mpid ? (double) dpss * 1024.0 / (double) sessions : 0;
    uint64_t cfail = SUM(connect_fail), disc = SUM(disconnects), resyncs = SUM(resyncs), errs = SUM(errors);
    uint64_t lagmax = 0;
    for (int i = 0; i < nprocs; i++) if (shm->w[i].pace_lag_max > lagmax) lagmax = shm->w[i].pace_lag_max;
    double lagavg = sent ? (double) shm->w[0].pace_lag_sum / (double) sent : 0;
    const char *reason = "";
    const char *nack = "";
    for (int i = 0; i < nprocs; i++) {
        if (!reason[0] && shm->w[i].fail_reason[0]) reason = shm->w[i].fail_reason;
        if (!nack[0] && shm->w[i].nack_sample[0]) nack = shm->w[i].nack_sample;
    }
    double drain_s = t_done && t_end ? (double) (t_done - t_end) / 1e6 : 0;

    if (!opt.json_only) {
        printf("collab-bench %s %s:%d  S=%d K=%d P=%d R=%g/s D=%gs B=%d  procs=%d prefix=%s\n",
               opt.mode == MODE_COLLAB ? "collab" : "nchan", opt.host, opt.port, opt.subs, opt.docs,
               opt.pubs, opt.rate, opt.duration, opt.size, nprocs, opt.prefix);
        printf("  sessions     %" PRIu64 " ready (%" PRIu64 " subscribers), %" PRIu64 " connect failures, %"
               PRIu64 " disconnects, connect phase %.2fs%s\n",
               sessions, sub_ok, cfail, disc, connect_s, probe_ok ? "" : "  PROBE TIMEOUT");
        if (reason[0]) printf("  first failure: %s\n", reason);
        if (opt.rate > 0) {
            printf("  published    %" PRIu64 " sent, %" PRIu64 " acks, %" PRIu64 " nacks%s%s\n",
                   sent, acks, nacks, nack[0] ? "  e.g. " : "", nack);
            printf("  delivered    %" PRIu64 " of %" PRIu64 " expected, lost %" PRIu64 ", duplicates %" PRIu64
                   ", order violations %" PRIu64 " (%" PRIu64 " missing seqs), resyncs %" PRIu64 ", errors %" PRIu64 "\n",
                   delivered, expected, lost, dups, gap_events, gaps, resyncs, errs);
            printf("  throughput   %.0f delivered/s over %.2fs (drain %.2fs)\n", dps, span, drain_s);
            printf("  latency us   p50 %" PRIu64 "  p90 %" PRIu64 "  p99 %" PRIu64 "  p99.9 %" PRIu64 "  max %" PRIu64
                   "  mean %.0f  (n=%" PRIu64 ")\n", pv[0], pv[1], pv[2], pv[3], lat_max,
                   lat_n ? (double) lat_sum / (double) lat_n : 0.0, lat_n);
            printf("  pacing       lag mean %.0f us, max %" PRIu64 " us; max client send backlog %" PRIu64 " B\n",
                   lagavg, lagmax, SUM(backlog_max));
        }
        if (mpid)
            printf("  nginx        %d workers, RSS %ld -> %ld kB (%+ld kB, %.0f B/session; PSS %.0f B/session), after run %ld kB\n",
                   nw, rss0, rss1, drss, rss_per, pss_per, rss2);
        if (cpujs[0])   /* % of one CPU while publishing and draining */
            printf("  cpu %%        %s\n", cpujs + 1);
    }
    printf("{\"tool\":\"collab-bench\",\"mode\":\"%s\",\"label\":\"%s\",\"subs\":%d,\"docs\":%d,\"pubs\":%d,"
           "\"rate\":%g,\"duration\":%g,\"size\":%d,\"procs\":%d,\"sessions\":%" PRIu64 ",\"subscribed\":%" PRIu64 ","
           "\"connect_fail\":%" PRIu64 ",\"disconnects\":%" PRIu64 ",\"connect_s\":%.3f,\"probe_ok\":%s,\"probe_s\":%.3f,"
           "\"sent\":%" PRIu64 ",\"acks\":%" PRIu64 ",\"nacks\":%" PRIu64 ",\"expected\":%" PRIu64 ",\"delivered\":%" PRIu64 ","
           "\"lost\":%" PRIu64 ",\"dups\":%" PRIu64 ",\"order_violations\":%" PRIu64 ",\"missing\":%" PRIu64 ","
           "\"resyncs\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"delivered_per_s\":%.1f,\"span_s\":%.3f,\"drain_s\":%.3f,"
           "\"p50_us\":%" PRIu64 ",\"p90_us\":%" PRIu64 ",\"p99_us\":%" PRIu64 ",\"p999_us\":%" PRIu64 ",\"max_us\":%" PRIu64 ","
           "\"mean_us\":%.1f,\"pace_lag_max_us\":%" PRIu64 ",\"pace_lag_mean_us\":%.1f,"
           "\"nginx_workers\":%d,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"rss_end_kb\":%ld,"
           "\"rss_per_session_b\":%.1f,\"pss_per_session_b\":%.1f%s}\n",
           opt.mode == MODE_COLLAB ? "collab" : "nchan", opt.label, opt.subs, opt.docs, opt.pubs, opt.rate,
           opt.duration, opt.size, nprocs, sessions, sub_ok, cfail, disc, connect_s, probe_ok ? "true" : "false",
           probe_s, sent, acks, nacks, expected, delivered, lost, dups, gap_events, gaps, resyncs, errs, dps, span,
           drain_s, pv[0], pv[1], pv[2], pv[3], lat_max, lat_n ? (double) lat_sum / (double) lat_n : 0.0, lagmax,
           lagavg, nw, rss0, rss1, rss2, rss_per, pss_per, cpujs);
    return 0;
}
