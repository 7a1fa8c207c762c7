
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Metrics, aggregated across the workers in the "collab_metrics" zone.
 *
 * Counters and histograms are shared words that every worker adds to with
 * one atomic add: they survive reloads (the zone is reused) and stay
 * monotonic.  Gauges (what is open now) are per process: a worker claims
 * a slot at start, writes its own values without atomics, and clears the
 * slot at exit, so an exiting worker's sessions count until it is gone.
 * A worker that crashed cannot clear its slot: a scrape skips and frees
 * the slots of processes that no longer exist.
 */


#define NGX_HTTP_COLLAB_METRICS_MAGIC  0x636f6c6c61620003ULL


typedef struct {
    ngx_atomic_t                     pid;        /* 0: free */
    ngx_atomic_t                     gauge[NGX_HTTP_COLLAB_G_N];
} ngx_http_collab_metrics_slot_t;


typedef struct {
    ngx_atomic_t                     bucket[NGX_HTTP_COLLAB_HIST_MAX];
    ngx_atomic_t                     sum;        /* in the family's unit */
} ngx_http_collab_metrics_hist_t;


struct ngx_http_collab_metrics_sh_s {
    uint64_t                         magic;
    ngx_atomic_t                     counter[NGX_HTTP_COLLAB_M_N];
    ngx_http_collab_metrics_hist_t   hist[NGX_HTTP_COLLAB_H_N];
    ngx_http_collab_metrics_slot_t   slot[NGX_HTTP_COLLAB_METRICS_SLOTS];
};


/* a labelled family: base + i for label value i */
typedef struct {
    const char                      *name;
    const char                      *type;
    const char                      *help;
    const char                      *label;      /* NULL: none */
    const char                     **values;
    ngx_uint_t                       base;
} ngx_http_collab_metrics_family_t;


typedef struct {
    const char                      *name;
    const char                      *help;
    ngx_uint_t                       scale;      /* units per 1 */
    ngx_uint_t                       nbounds;
    uint64_t                         bounds[NGX_HTTP_COLLAB_HIST_MAX - 1];
} ngx_http_collab_metrics_histdef_t;


static ngx_int_t ngx_http_collab_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_collab_metrics_handler(ngx_http_request_t *r);
static u_char *ngx_http_collab_metrics_family(u_char *p, u_char *last,
    ngx_http_collab_metrics_family_t *f, uint64_t *values);
static u_char *ngx_http_collab_metrics_hist(u_char *p, u_char *last,
    ngx_http_collab_metrics_histdef_t *d,
    ngx_http_collab_metrics_hist_t *h);
static u_char *ngx_http_collab_metrics_value(u_char *p, u_char *last,
    uint64_t v, ngx_uint_t scale);
static void ngx_http_collab_metrics_gauges(ngx_http_collab_metrics_sh_t *sh,
    uint64_t *g);


ngx_atomic_t                           *ngx_http_collab_metrics_counter;
static ngx_http_collab_metrics_sh_t    *ngx_http_collab_metrics;
static ngx_http_collab_metrics_slot_t  *ngx_http_collab_metrics_own;


/* message types, in the order of NGX_HTTP_COLLAB_MT_* */
static const char  *ngx_http_collab_metrics_types[] = {
    "other", "auth", "subscribe", "unsubscribe", "delta", "state", "intent",
    "presence", "welcome", "subscribed", "ack", "nack", "error", "resync",
    "role", "ok", NULL
};

static const char  *ngx_http_collab_metrics_in_types[] = {
    "other", "auth", "subscribe", "unsubscribe", "delta", "state", "intent",
    "presence", NULL
};

static const char  *ngx_http_collab_metrics_out_types[] = {
    "other", NULL, NULL, NULL, "delta", NULL, "intent", "presence",
    "welcome", "subscribed", "ack", "nack", "error", "resync", "role", "ok",
    NULL
};

#define NGX_HTTP_COLLAB_METRICS_OUT_TYPES  16

static const char  *ngx_http_collab_metrics_nack_codes[] = {
    "other", "invalid", "forbidden", "rate_limited", "conflict", "internal",
    "too_large", "unavailable", NULL
};

static const char  *ngx_http_collab_metrics_close_codes[] = {
    "other", "1000", "1001", "1002", "1003", "1006", "1007", "1008", "1009",
    "1011", "4401", "4403", "4408", "4429", NULL
};

static ngx_uint_t  ngx_http_collab_metrics_close_nums[] = {
    0, 1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 4401, 4403,
    4408, 4429
};

static const char  *ngx_http_collab_metrics_limits[] = {
    "messages", "bytes", "user", "post", "user_sessions", "doc_sessions",
    "redis", NULL
};

static const char  *ngx_http_collab_metrics_resyncs[] = {
    "other", "lagging", "epoch", "trimmed", NULL
};

static const char  *ngx_http_collab_metrics_auth[] = {
    "missing", "invalid", "expired", "timeout", "mismatch", NULL
};

/* in the order of NGX_HTTP_COLLAB_TRANSPORT_*, less one */
static const char  *ngx_http_collab_metrics_transports[] = {
    "websocket", "sse", "post", "admin", "get", NULL
};


static ngx_http_collab_metrics_family_t  ngx_http_collab_metrics_counters[] = {

    { "collab_messages_in_total", "counter",
      "Client messages received, by type.", "type",
      ngx_http_collab_metrics_in_types, NGX_HTTP_COLLAB_M_IN },

    { "collab_messages_out_total", "counter",
      "Messages queued to clients, by type.", "type",
      ngx_http_collab_metrics_out_types, NGX_HTTP_COLLAB_M_OUT },

    { "collab_bytes_in_total", "counter",
      "Bytes of client messages received (payloads).", NULL, NULL,
      NGX_HTTP_COLLAB_M_BYTES_IN },

    { "collab_bytes_out_total", "counter",
      "Bytes queued to clients (WebSocket frames, SSE events, POST "
      "replies).", NULL, NULL, NGX_HTTP_COLLAB_M_BYTES_OUT },

    { "collab_acks_total", "counter",
      "Deltas acknowledged.", NULL, NULL, NGX_HTTP_COLLAB_M_ACKS },

    { "collab_nacks_total", "counter",
      "Deltas refused, by code.", "code",
      ngx_http_collab_metrics_nack_codes, NGX_HTTP_COLLAB_M_NACKS },

    { "collab_disconnects_total", "counter",
      "WebSocket and SSE sessions ended, by close code.", "code",
      ngx_http_collab_metrics_close_codes, NGX_HTTP_COLLAB_M_DISCONNECTS },

    { "collab_rate_limited_total", "counter",
      "Messages, requests and sessions refused by a limit.", "limit",
      ngx_http_collab_metrics_limits, NGX_HTTP_COLLAB_M_RATE_LIMITED },

    { "collab_lagging_total", "counter",
      "Live subscribers switched to the log because their send queue "
      "was full.", NULL, NULL, NGX_HTTP_COLLAB_M_LAGGING },

    { "collab_resyncs_total", "counter",
      "resync messages sent, by reason.", "reason",
      ngx_http_collab_metrics_resyncs, NGX_HTTP_COLLAB_M_RESYNCS },

    { "collab_auth_failures_total", "counter",
      "Refused identities, by reason.", "reason",
      ngx_http_collab_metrics_auth, NGX_HTTP_COLLAB_M_AUTH_FAILURES },

    { "collab_acl_reloads_total", "counter",
      "ACL documents loaded after a change notice.", NULL, NULL,
      NGX_HTTP_COLLAB_M_ACL_RELOADS },

    { "collab_redis_commands_total", "counter",
      "Redis commands sent on the command connections.", NULL, NULL,
      NGX_HTTP_COLLAB_M_REDIS_COMMANDS },

    { "collab_redis_errors_total", "counter",
      "Redis commands refused, failed or answered with an error.", NULL,
      NULL, NGX_HTTP_COLLAB_M_REDIS_ERRORS },

    { "collab_redis_reconnects_total", "counter",
      "Redis connection attempts after a connection was lost.", NULL, NULL,
      NGX_HTTP_COLLAB_M_REDIS_RECONNECTS },

    { NULL, NULL, NULL, NULL, NULL, 0 }
};


static ngx_http_collab_metrics_family_t  ngx_http_collab_metrics_gauge_f[] = {

    { "collab_connections", "gauge",
      "Open requests of the collab locations, by transport.", "transport",
      ngx_http_collab_metrics_transports, NGX_HTTP_COLLAB_G_CONN },

    { "collab_sessions", "gauge",
      "WebSocket and SSE sessions with an identity.", NULL, NULL,
      NGX_HTTP_COLLAB_G_SESSIONS },

    { "collab_documents", "gauge",
      "Documents open, summed over the workers (one open in two workers "
      "counts twice).", NULL, NULL, NGX_HTTP_COLLAB_G_DOCUMENTS },

    { "collab_redis_inflight", "gauge",
      "Redis commands waiting for their reply.", NULL, NULL,
      NGX_HTTP_COLLAB_G_REDIS_INFLIGHT },

    { "collab_redis_replica_usable", "gauge",
      "Workers that use their replica= for reads.", NULL, NULL,
      NGX_HTTP_COLLAB_G_REPLICA_USABLE },

    { NULL, NULL, NULL, NULL, NULL, 0 }
};


/* bounds in the unit: microseconds, or entries */
static ngx_http_collab_metrics_histdef_t  ngx_http_collab_metrics_hists[] = {

    { "collab_redis_latency_seconds",
      "Redis command round trip (1 ms resolution).", 1000000, 13,
      { 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
        1000000, 2500000, 5000000, 10000000 } },

    { "collab_fanout_delay_seconds",
      "From a delta stored in Redis until it is queued to the last local "
      "subscriber (1 ms resolution).", 1000000, 13,
      { 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
        1000000, 2500000, 5000000, 10000000 } },

    { "collab_revocation_latency_seconds",
      "From an ACL change notice until a session's role changed.",
      1000000, 13,
      { 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
        1000000, 2500000, 5000000, 10000000 } },

    { "collab_replay_entries",
      "Log entries served by one catch-up read.", 1, 8,
      { 0, 1, 5, 10, 50, 100, 256, 1000 } }
};


/* collab_metrics: the location answers with the metrics */

char *
ngx_http_collab_metrics_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_collab_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_collab_module);
    mcf->metrics = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_collab_metrics_handler) {
        return "is duplicate";
    }

    if (clcf->handler) {
        return "conflicts with another handler of the location";
    }

    clcf->handler = ngx_http_collab_metrics_handler;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_collab_metrics_zone_add(ngx_conf_t *cf,
    ngx_http_collab_main_conf_t *mcf)
{
    size_t     size;
    ngx_str_t  name;

    ngx_str_set(&name, "collab_metrics");

    /* the layout's size names the zone's version: a new one starts anew */
    size = ngx_align(sizeof(ngx_http_collab_metrics_sh_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    mcf->metrics_zone = ngx_shared_memory_add(cf, &name, size,
                                              &ngx_http_collab_module);
    if (mcf->metrics_zone == NULL) {
        return NGX_ERROR;
    }

    mcf->metrics_zone->init = ngx_http_collab_metrics_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t               *shpool;
    ngx_http_collab_metrics_sh_t  *sh;

    if (data) {
        /* a reload: the counters go on */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists && shpool->data) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_collab_metrics_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->magic = NGX_HTTP_COLLAB_METRICS_MAGIC;
    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


/*
 * A process takes a free slot, or the slot of a process that is gone (a
 * crashed worker's); without one its gauges are not shown.
 */

void
ngx_http_collab_metrics_init_process(ngx_http_collab_main_conf_t *mcf,
    ngx_log_t *log)
{
    ngx_uint_t                       i, pass;
    ngx_atomic_uint_t                pid;
    ngx_http_collab_metrics_sh_t    *sh;
    ngx_http_collab_metrics_slot_t  *slot;

    ngx_http_collab_metrics = NULL;
    ngx_http_collab_metrics_counter = NULL;
    ngx_http_collab_metrics_own = NULL;

    if (mcf->metrics_zone == NULL || mcf->metrics_zone->data == NULL) {
        return;
    }

    sh = mcf->metrics_zone->data;
    ngx_http_collab_metrics = sh;
    ngx_http_collab_metrics_counter = sh->counter;

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < NGX_HTTP_COLLAB_METRICS_SLOTS; i++) {
            slot = &sh->slot[i];
            pid = slot->pid;

            if (pass == 0 ? pid != 0
                          : (pid == 0 || kill((pid_t) pid, 0) == 0
                             || ngx_errno != NGX_ESRCH))
            {
                continue;
            }

            if (ngx_atomic_cmp_set(&slot->pid, pid,
                                   (ngx_atomic_uint_t) ngx_pid))
            {
                ngx_memzero((void *) slot->gauge, sizeof(slot->gauge));
                ngx_http_collab_metrics_own = slot;
                return;
            }
        }
    }

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "collab: no free slot in the metrics zone, the gauges of "
                  "this worker are not shown");
}


void
ngx_http_collab_metrics_exit_process(void)
{
    ngx_http_collab_metrics_slot_t  *slot;

    slot = ngx_http_collab_metrics_own;

    if (slot == NULL) {
        return;
    }

    ngx_http_collab_metrics_own = NULL;

    ngx_memzero((void *) slot->gauge, sizeof(slot->gauge));
    ngx_memory_barrier();
    slot->pid = 0;
}


ngx_uint_t
ngx_http_collab_metrics_type(u_char *p, size_t len)
{
    ngx_uint_t  i;

    for (i = 1; ngx_http_collab_metrics_types[i]; i++) {
        if (ngx_strlen(ngx_http_collab_metrics_types[i]) == len
            && ngx_strncmp(ngx_http_collab_metrics_types[i], p, len) == 0)
        {
            return i;
        }
    }

    return NGX_HTTP_COLLAB_MT_OTHER;
}


/* a message queued to a client: its type, bytes, and a nack's code */

void
ngx_http_collab_metrics_out(ngx_http_collab_msg_t *m, size_t len)
{
    u_char      *p, *last;
    ngx_uint_t   i, code;

    if (ngx_http_collab_metrics == NULL) {
        return;
    }

    if (m->mtype == 0) {
        m->mtype = 1 + ngx_http_collab_metrics_type(m->type.data, m->type.len);
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_OUT + m->mtype - 1);
    ngx_http_collab_metric_add(NGX_HTTP_COLLAB_M_BYTES_OUT, len);

    if (m->mtype - 1 == NGX_HTTP_COLLAB_MT_ACK) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_ACKS);
        return;
    }

    if (m->mtype - 1 != NGX_HTTP_COLLAB_MT_NACK) {
        return;
    }

    /* nacks are few: the code is found in the text */

    code = 0;
    last = m->json + m->len;
    p = ngx_strlcasestrn(m->json, last, (u_char *) "\"code\":\"", 8 - 1);

    if (p) {
        p += 8;

        for (i = 1; ngx_http_collab_metrics_nack_codes[i]; i++) {
            len = ngx_strlen(ngx_http_collab_metrics_nack_codes[i]);

            if ((size_t) (last - p) > len && p[len] == '"'
                && ngx_strncmp(p, ngx_http_collab_metrics_nack_codes[i], len)
                   == 0)
            {
                code = i;
                break;
            }
        }
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_NACKS + code);
}


void
ngx_http_collab_metrics_disconnect(ngx_uint_t code)
{
    ngx_uint_t  i;

    for (i = 1; i < sizeof(ngx_http_collab_metrics_close_nums)
                    / sizeof(ngx_uint_t); i++)
    {
        if (ngx_http_collab_metrics_close_nums[i] == code) {
            break;
        }
    }

    if (i == sizeof(ngx_http_collab_metrics_close_nums) / sizeof(ngx_uint_t))
    {
        i = 0;
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_DISCONNECTS + i);
}


void
ngx_http_collab_metrics_resync(const char *reason)
{
    ngx_uint_t  i;

    for (i = 1; ngx_http_collab_metrics_resyncs[i]; i++) {
        if (ngx_strcmp(ngx_http_collab_metrics_resyncs[i], reason) == 0) {
            break;
        }
    }

    if (ngx_http_collab_metrics_resyncs[i] == NULL) {
        i = 0;
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_RESYNCS + i);
}


void
ngx_http_collab_metrics_observe(ngx_uint_t h, uint64_t v)
{
    ngx_uint_t                          i;
    ngx_http_collab_metrics_histdef_t  *d;

    if (ngx_http_collab_metrics == NULL) {
        return;
    }

    d = &ngx_http_collab_metrics_hists[h];

    for (i = 0; i < d->nbounds && v > d->bounds[i]; i++) { /* void */ }

    (void) ngx_atomic_fetch_add(&ngx_http_collab_metrics->hist[h].bucket[i],
                                1);
    (void) ngx_atomic_fetch_add(&ngx_http_collab_metrics->hist[h].sum,
                                (ngx_atomic_int_t) v);
}


void
ngx_http_collab_metrics_gauge(ngx_uint_t g, ngx_int_t delta)
{
    if (ngx_http_collab_metrics_own) {
        ngx_http_collab_metrics_own->gauge[g] += delta;
    }
}


/*
 * A delta as published ({"type":"delta",...,"ts":MS,...}): from its
 * store time to now.  The id and user before "ts" are JSON strings, in
 * which ,"ts": cannot appear unescaped.
 */

void
ngx_http_collab_metrics_fanout(u_char *payload, size_t len)
{
    u_char      *p, *last;
    uint64_t     ts, now;
    ngx_time_t  *tp;

    if (ngx_http_collab_metrics == NULL) {
        return;
    }

    last = payload + len;
    p = ngx_strlcasestrn(payload, last, (u_char *) ",\"ts\":", 6 - 1);

    if (p == NULL) {
        return;
    }

    ts = 0;

    for (p += 6; p < last && *p >= '0' && *p <= '9'; p++) {
        ts = ts * 10 + (*p - '0');
    }

    tp = ngx_timeofday();
    now = (uint64_t) tp->sec * 1000 + tp->msec;

    /* the clocks of Redis and nginx may differ a little */
    ngx_http_collab_metrics_observe(NGX_HTTP_COLLAB_H_FANOUT,
                                    now > ts ? (now - ts) * 1000 : 0);
}


/* the limit zone's slots, taken and all, for the scrape */

static ngx_int_t
ngx_http_collab_metrics_handler(ngx_http_request_t *r)
{
    u_char                        *p, *last;
    size_t                         size;
    uint64_t                       values[NGX_HTTP_COLLAB_M_N];
    uint64_t                       gauges[NGX_HTTP_COLLAB_G_N];
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_uint_t                     i, used, total;
    ngx_chain_t                    out;
    ngx_http_collab_metrics_sh_t  *sh;
    ngx_http_collab_main_conf_t   *mcf;

    if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_collab_module);

    sh = mcf->metrics_zone ? mcf->metrics_zone->data : NULL;
    if (sh == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    for (i = 0; i < NGX_HTTP_COLLAB_M_N; i++) {
        values[i] = sh->counter[i];
    }

    ngx_http_collab_metrics_gauges(sh, gauges);

    size = 64 * 1024;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->pos;
    last = b->end;

    for (i = 0; ngx_http_collab_metrics_counters[i].name; i++) {
        p = ngx_http_collab_metrics_family(p, last,
                                           &ngx_http_collab_metrics_counters[i],
                                           values);
    }

    for (i = 0; ngx_http_collab_metrics_gauge_f[i].name; i++) {
        p = ngx_http_collab_metrics_family(p, last,
                                           &ngx_http_collab_metrics_gauge_f[i],
                                           gauges);
    }

    for (i = 0; i < NGX_HTTP_COLLAB_H_N; i++) {
        p = ngx_http_collab_metrics_hist(p, last,
                                         &ngx_http_collab_metrics_hists[i],
                                         &sh->hist[i]);
    }

    if (ngx_http_collab_limit_usage(&used, &total) == NGX_OK) {
        p = ngx_slprintf(p, last,
                "# HELP collab_limit_zone_slots Slots of the limit zone.\n"
                "# TYPE collab_limit_zone_slots gauge\n"
                "collab_limit_zone_slots %ui\n"
                "# HELP collab_limit_zone_slots_used Slots of the limit zone "
                "that hold a user, document or address.\n"
                "# TYPE collab_limit_zone_slots_used gauge\n"
                "collab_limit_zone_slots_used %ui\n", total, used);
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the live processes' gauges; a crashed worker's slot is freed */

static void
ngx_http_collab_metrics_gauges(ngx_http_collab_metrics_sh_t *sh, uint64_t *g)
{
    ngx_uint_t                       i, j;
    ngx_atomic_uint_t                pid;
    ngx_atomic_int_t                 v;
    ngx_http_collab_metrics_slot_t  *slot;

    ngx_memzero(g, NGX_HTTP_COLLAB_G_N * sizeof(uint64_t));

    for (i = 0; i < NGX_HTTP_COLLAB_METRICS_SLOTS; i++) {
        slot = &sh->slot[i];
        pid = slot->pid;

        if (pid == 0) {
            continue;
        }

        if (kill((pid_t) pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
            (void) ngx_atomic_cmp_set(&slot->pid, pid, 0);
            continue;
        }

        for (j = 0; j < NGX_HTTP_COLLAB_G_N; j++) {
            /* a worker's own count never goes below zero */
            v = (ngx_atomic_int_t) slot->gauge[j];
            g[j] += (v > 0) ? (uint64_t) v : 0;
        }
    }
}


static u_char *
ngx_http_collab_metrics_family(u_char *p, u_char *last,
    ngx_http_collab_metrics_family_t *f, uint64_t *values)
{
    ngx_uint_t  i;

    p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                     f->name, f->help, f->name, f->type);

    if (f->label == NULL) {
        return ngx_slprintf(p, last, "%s %uL\n", f->name, values[f->base]);
    }

    for (i = 0; f->values[i] || f->values == ngx_http_collab_metrics_out_types;
         i++)
    {
        if (f->values == ngx_http_collab_metrics_out_types) {
            if (i == NGX_HTTP_COLLAB_METRICS_OUT_TYPES) {
                break;
            }

            if (f->values[i] == NULL) {
                continue;
            }
        }

        p = ngx_slprintf(p, last, "%s{%s=\"%s\"} %uL\n", f->name, f->label,
                         f->values[i], values[f->base + i]);
    }

    return p;
}


static u_char *
ngx_http_collab_metrics_hist(u_char *p, u_char *last,
    ngx_http_collab_metrics_histdef_t *d, ngx_http_collab_metrics_hist_t *h)
{
    uint64_t    n;
    ngx_uint_t  i;

    p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s histogram\n",
                     d->name, d->help, d->name);

    n = 0;

    for (i = 0; i <= d->nbounds; i++) {
        n += h->bucket[i];

        p = ngx_slprintf(p, last, "%s_bucket{le=\"", d->name);

        if (i == d->nbounds) {
            p = ngx_slprintf(p, last, "+Inf");

        } else {
            p = ngx_http_collab_metrics_value(p, last, d->bounds[i],
                                              d->scale);
        }

        p = ngx_slprintf(p, last, "\"} %uL\n", n);
    }

    p = ngx_slprintf(p, last, "%s_sum ", d->name);
    p = ngx_http_collab_metrics_value(p, last, (uint64_t) h->sum, d->scale);

    return ngx_slprintf(p, last, "\n%s_count %uL\n", d->name, n);
}


/* v / scale in decimal, without trailing zeros */

static u_char *
ngx_http_collab_metrics_value(u_char *p, u_char *last, uint64_t v,
    ngx_uint_t scale)
{
    u_char    *q;
    uint64_t   frac;

    if (scale == 1) {
        return ngx_slprintf(p, last, "%uL", v);
    }

    p = ngx_slprintf(p, last, "%uL", v / scale);
    frac = v % scale;

    if (frac == 0) {
        return p;
    }

    /* scale is 10^6 */
    q = p;
    p = ngx_slprintf(p, last, ".%06uL", frac);

    while (p > q + 1 && p[-1] == '0') {
        p--;
    }

    return p;
}
