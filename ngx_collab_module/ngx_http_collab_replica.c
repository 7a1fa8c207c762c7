
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * "collab_redis ... replica=HOST:PORT [replica_lag=T]": a Redis replica near
 * this nginx serves its reads.  A worker keeps a command and a subscriber
 * connection to it (w->rcmd, w->rsub) next to those to the primary.  While
 * the replica is usable, log reads go to it (collab_read_ro) and the
 * documents' channels are followed on it; appends, snapshots, ACL loads,
 * presence, ephemera and the admin endpoint stay on the primary.
 *
 * Usable: both connections ready; the replica says it is one, with its
 * link to the primary up (INFO replication, every second); it holds a
 * library that serves this module (collab_version); and it does not lag.
 * Lag is measured end to end: every second the worker PUBLISHes a probe on
 * the primary's command connection, on a channel of its own that it
 * follows on the replica.  One probe is out at a time.
 *
 * Whatever makes it unusable (a probe late or not sent, a check not
 * answered in time or failed, a connection lost) also makes it untrusted:
 * it is used again only after "need" probes in a row came back in time
 * while the checks were good.  need starts at REPLICA_GOOD, doubles with
 * every usable -> unusable change up to REPLICA_GOOD_MAX, and is back at
 * REPLICA_GOOD after REPLICA_CALM of use: a replica that flaps is used
 * less and less often.
 *
 * When usability changes, the documents follow it as they follow a cluster
 * map (ngx_http_collab_doc_redis_follow): they leave one subscriber
 * connection, their members catch up from the log, and they are followed
 * on the other.  A replica that stops being usable has its connections
 * dropped: reads in flight there get NULL replies and go to the primary at
 * once, and channels do not wait for a lagging replica to confirm their
 * UNSUBSCRIBE.
 */


#define NGX_HTTP_COLLAB_REPLICA_TICK      1000
#define NGX_HTTP_COLLAB_REPLICA_GOOD      3
#define NGX_HTTP_COLLAB_REPLICA_GOOD_MAX  24
#define NGX_HTTP_COLLAB_REPLICA_CALM      60000
/* not usable this long: warned of (again after REPLICA_NAG) */
#define NGX_HTTP_COLLAB_REPLICA_UNUSED    10000
#define NGX_HTTP_COLLAB_REPLICA_NAG       60000


struct ngx_http_collab_replica_s {
    ngx_event_t                  tick;           /* probe and checks */
    ngx_event_t                  deadline;       /* the probe is late */
    ngx_event_t                  follow;         /* posted: docs move */
    ngx_log_t                   *log;
    ngx_str_t                    addr;
    ngx_msec_t                   lag;
    ngx_msec_t                   probe_sent;
    ngx_msec_t                   checks_sent;
    ngx_msec_t                   since;          /* usable or not since */
    ngx_msec_t                   warned;         /* unused: last warning */
    uint64_t                     probe_n;
    ngx_uint_t                   good;           /* in time, in a row */
    ngx_uint_t                   need;           /* good: to be trusted */
    ngx_uint_t                   checks;         /* INFO, version pending */
    const char                  *role_why;       /* role_ok == 0: why */
    size_t                       channel_len;
    u_char                       channel[64];
    u_char                       nonce[16];      /* this process's, hex */
    unsigned                     usable:1;
    unsigned                     probing:1;      /* a probe is out */
    unsigned                     listening:1;    /* its channel followed */
    unsigned                     role_ok:1;
    unsigned                     library_ok:1;
    unsigned                     lagging:1;
    unsigned                     drop:1;         /* follow drops the links */
};


static void ngx_http_collab_replica_tick(ngx_event_t *ev);
static void ngx_http_collab_replica_check(ngx_http_collab_replica_t *r);
static void ngx_http_collab_replica_probe(ngx_http_collab_replica_t *r);
static void ngx_http_collab_replica_late(ngx_event_t *ev);
static void ngx_http_collab_replica_probe_reply(redisAsyncContext *ac,
    void *reply, void *data);
static void ngx_http_collab_replica_info_reply(redisAsyncContext *ac,
    void *reply, void *data);
static void ngx_http_collab_replica_version_reply(redisAsyncContext *ac,
    void *reply, void *data);
static void ngx_http_collab_replica_update(ngx_http_collab_replica_t *r);
static const char *ngx_http_collab_replica_why(ngx_http_collab_replica_t *r);
static void ngx_http_collab_replica_follow(ngx_event_t *ev);
static void ngx_http_collab_replica_distrust(ngx_http_collab_replica_t *r);
static void ngx_http_collab_replica_nonce(ngx_http_collab_replica_t *r);
static void ngx_http_collab_replica_unused(ngx_http_collab_replica_t *r);


ngx_int_t
ngx_http_collab_replica_init(ngx_cycle_t *cycle,
    ngx_http_collab_main_conf_t *mcf)
{
    ngx_http_collab_replica_t  *r;
    ngx_http_collab_worker_t   *w;

    w = ngx_http_collab_worker;

    r = ngx_pcalloc(cycle->pool, sizeof(ngx_http_collab_replica_t));
    if (r == NULL) {
        return NGX_ERROR;
    }

    w->replica = r;

    r->log = cycle->log;
    r->lag = mcf->replica_lag;
    r->lagging = 1;
    r->need = NGX_HTTP_COLLAB_REPLICA_GOOD;
    r->since = ngx_current_msec;
    r->role_why = "not checked yet";
    r->addr.data = mcf->replica->text;
    r->addr.len = mcf->replica->text_len;

    /* the worker's own: several nginx (hosts, containers) share Redis */

    ngx_http_collab_replica_nonce(r);

    r->channel_len = ngx_sprintf(r->channel, "collab:__replica__:%P:%*s",
                                 ngx_pid, sizeof(r->nonce), r->nonce)
                     - r->channel;

    r->tick.handler = ngx_http_collab_replica_tick;
    r->tick.data = r;
    r->tick.log = cycle->log;
    r->tick.cancelable = 1;

    r->deadline.handler = ngx_http_collab_replica_late;
    r->deadline.data = r;
    r->deadline.log = cycle->log;
    r->deadline.cancelable = 1;

    r->follow.handler = ngx_http_collab_replica_follow;
    r->follow.data = r;
    r->follow.log = cycle->log;

    w->rcmd.replica = 1;
    w->rsub.replica = 1;

    if (ngx_http_collab_redis_init(cycle, &w->rcmd, mcf, 0,
                                   "replica command")
        != NGX_OK
        || ngx_http_collab_redis_init(cycle, &w->rsub, mcf, 1,
                                      "replica subscriber")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_add_timer(&r->tick, NGX_HTTP_COLLAB_REPLICA_TICK);

    return NGX_OK;
}


/* random bytes; without /dev/urandom: the time, pid and host name */

static void
ngx_http_collab_replica_nonce(ngx_http_collab_replica_t *r)
{
    u_char       raw[8];
    ssize_t      n;
    uint32_t     h;
    ngx_fd_t     fd;
    ngx_time_t  *tp;

    n = -1;
    fd = ngx_open_file("/dev/urandom", NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd != NGX_INVALID_FILE) {
        n = read(fd, raw, sizeof(raw));
        (void) ngx_close_file(fd);
    }

    if (n != (ssize_t) sizeof(raw)) {
        tp = ngx_timeofday();
        h = ngx_crc32_short(ngx_cycle->hostname.data, ngx_cycle->hostname.len);
        h ^= (uint32_t) ngx_random();

        ngx_memcpy(raw, &h, 4);
        h = (uint32_t) (tp->sec * 1000 + tp->msec) ^ (uint32_t) ngx_pid;
        ngx_memcpy(raw + 4, &h, 4);
    }

    (void) ngx_hex_dump(r->nonce, raw, sizeof(raw));
}


void
ngx_http_collab_replica_exit(void)
{
    ngx_http_collab_replica_t  *r;
    ngx_http_collab_worker_t   *w;

    w = ngx_http_collab_worker;
    r = w->replica;

    if (r->tick.timer_set) {
        ngx_del_timer(&r->tick);
    }

    if (r->deadline.timer_set) {
        ngx_del_timer(&r->deadline);
    }

    ngx_http_collab_redis_exit(&w->rcmd);
    ngx_http_collab_redis_exit(&w->rsub);

    if (r->follow.posted) {
        ngx_delete_posted_event(&r->follow);
    }
}


ngx_uint_t
ngx_http_collab_replica_usable(void)
{
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    return w->replica && w->replica->usable;
}


/*
 * How far behind a replica still counted usable may be: replica_lag, and
 * a tick more before its lag is seen.  0 without a replica.
 */

ngx_msec_t
ngx_http_collab_replica_behind(void)
{
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w->replica == NULL) {
        return 0;
    }

    return w->replica->lag + NGX_HTTP_COLLAB_REPLICA_TICK;
}


/* where a log read goes: the replica while usable and not full, or NULL */

ngx_http_collab_redis_t *
ngx_http_collab_replica_reads(void)
{
    ngx_http_collab_redis_t   *rc;
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w->replica == NULL || !w->replica->usable) {
        return NULL;
    }

    rc = &w->rcmd;

    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || rc->ninflight >= rc->mcf->redis_max_inflight)
    {
        return NULL;
    }

    return rc;
}


/* a replica connection is ready: follow the probes, or check at once */

void
ngx_http_collab_replica_ready(ngx_http_collab_redis_t *rc)
{
    const char                 *argv[2];
    size_t                      argvlen[2];
    ngx_http_collab_replica_t  *r;

    r = ngx_http_collab_worker->replica;

    if (!rc->subscriber) {
        ngx_http_collab_replica_check(r);
        return;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = (const char *) r->channel;
    argvlen[1] = r->channel_len;

    (void) ngx_http_collab_redis_raw(rc, ngx_http_collab_replica_probe_reply,
                                     r, 2, argv, argvlen);
}


/* a replica connection failed (maybe inside a hiredis callback) */

void
ngx_http_collab_replica_lost(ngx_http_collab_redis_t *rc)
{
    ngx_http_collab_replica_t  *r;

    r = ngx_http_collab_worker->replica;

    if (r == NULL || rc->exiting) {
        return;
    }

    if (rc->subscriber) {
        /* a probe out is lost with it: counted as late */
        r->listening = 0;
        r->probing = 0;

        if (r->deadline.timer_set) {
            ngx_del_timer(&r->deadline);
        }

    } else {
        r->role_ok = 0;
        r->role_why = "its connection was lost";
        r->checks = 0;
    }

    ngx_http_collab_replica_distrust(r);
    ngx_http_collab_replica_update(r);
}


/* trusted again only after r->need good probes in a row */

static void
ngx_http_collab_replica_distrust(ngx_http_collab_replica_t *r)
{
    r->good = 0;
    r->lagging = 1;
}


static void
ngx_http_collab_replica_tick(ngx_event_t *ev)
{
    ngx_http_collab_replica_t  *r;

    r = ev->data;

    ngx_http_collab_replica_check(r);
    ngx_http_collab_replica_probe(r);
    ngx_http_collab_replica_update(r);

    if (r->usable) {
        if (ngx_current_msec - r->since >= NGX_HTTP_COLLAB_REPLICA_CALM) {
            /* used long enough: a later flap starts from the beginning */
            r->need = NGX_HTTP_COLLAB_REPLICA_GOOD;
        }

    } else {
        ngx_http_collab_replica_unused(r);
    }

    ngx_add_timer(&r->tick, NGX_HTTP_COLLAB_REPLICA_TICK);
}


/* a replica never (or long not) used says why, once a minute */

static void
ngx_http_collab_replica_unused(ngx_http_collab_replica_t *r)
{
    if (ngx_current_msec - r->since < NGX_HTTP_COLLAB_REPLICA_UNUSED
        || (r->warned
            && ngx_current_msec - r->warned < NGX_HTTP_COLLAB_REPLICA_NAG))
    {
        return;
    }

    r->warned = ngx_current_msec;

    ngx_log_error(NGX_LOG_WARN, r->log, 0,
                  "collab: the replica \"%V\" is not used for reads for "
                  "%M s: %s", &r->addr, (ngx_current_msec - r->since) / 1000,
                  ngx_http_collab_replica_why(r));
}


/* INFO replication and the library's version, one round at a time */

static void
ngx_http_collab_replica_check(ngx_http_collab_replica_t *r)
{
    const char               *argv[3];
    size_t                    argvlen[3];
    ngx_http_collab_redis_t  *rc;

    rc = &ngx_http_collab_worker->rcmd;

    if (rc->state != NGX_HTTP_COLLAB_REDIS_READY) {
        return;
    }

    if (r->checks) {
        if (ngx_current_msec - r->checks_sent
            >= NGX_HTTP_COLLAB_REPLICA_TICK / 2)
        {
            /* the last round is not answered yet */
            r->role_ok = 0;
            r->role_why = "it does not answer";
            ngx_http_collab_replica_distrust(r);
        }

        return;
    }

    argv[0] = "INFO";
    argvlen[0] = 4;
    argv[1] = "replication";
    argvlen[1] = 11;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_replica_info_reply, r,
                                  2, argv, argvlen)
        != NGX_OK)
    {
        return;
    }

    r->checks++;
    r->checks_sent = ngx_current_msec;

    argv[0] = "FCALL_RO";
    argvlen[0] = 8;
    argv[1] = "collab_version";
    argvlen[1] = 14;
    argv[2] = "0";
    argvlen[2] = 1;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_replica_version_reply,
                                  r, 3, argv, argvlen)
        == NGX_OK)
    {
        r->checks++;
    }
}


/* one probe out at a time; one that is late is given up on the next tick */

static void
ngx_http_collab_replica_probe(ngx_http_collab_replica_t *r)
{
    u_char                    n[sizeof(r->nonce) + 1 + NGX_INT64_LEN];
    const char               *argv[3];
    size_t                    argvlen[3];
    ngx_http_collab_redis_t  *rc;

    if (r->probing && ngx_current_msec - r->probe_sent < r->lag) {
        return;
    }

    r->probing = 0;

    if (r->deadline.timer_set) {
        ngx_del_timer(&r->deadline);
    }

    rc = &ngx_http_collab_worker->cmd;

    argv[0] = "PUBLISH";
    argvlen[0] = 7;
    argv[1] = (const char *) r->channel;
    argvlen[1] = r->channel_len;
    argv[2] = (const char *) n;
    argvlen[2] = ngx_sprintf(n, "%*s:%uL", sizeof(r->nonce), r->nonce,
                             r->probe_n + 1)
                 - n;

    if (!r->listening || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || ngx_http_collab_redis_raw(rc, NULL, NULL, 3, argv, argvlen)
           != NGX_OK)
    {
        /* nothing measures the lag: not trusted */
        ngx_http_collab_replica_distrust(r);
        return;
    }

    r->probe_n++;
    r->probe_sent = ngx_current_msec;
    r->probing = 1;

    ngx_add_timer(&r->deadline, r->lag);
}


static void
ngx_http_collab_replica_late(ngx_event_t *ev)
{
    ngx_http_collab_replica_t  *r;

    r = ev->data;

    if (!r->probing) {
        return;
    }

    ngx_http_collab_replica_distrust(r);
    ngx_http_collab_replica_update(r);
}


static void
ngx_http_collab_replica_probe_reply(redisAsyncContext *ac, void *reply,
    void *data)
{
    ngx_http_collab_replica_t *r = data;

    int64_t      n;
    redisReply  *rep, *kind, *p;

    rep = reply;

    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3
        || rep->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    kind = rep->element[0];

    if (ngx_strcmp(kind->str, "subscribe") == 0) {
        r->listening = 1;
        ngx_http_collab_replica_update(r);
        return;
    }

    p = rep->element[2];

    if (ngx_strcmp(kind->str, "message") != 0
        || p->type != REDIS_REPLY_STRING
        || p->len <= sizeof(r->nonce) + 1
        || ngx_memcmp(p->str, r->nonce, sizeof(r->nonce)) != 0
        || p->str[sizeof(r->nonce)] != ':')
    {
        /* not ours: another process that happens to use the channel */
        return;
    }

    n = ngx_atoof((u_char *) p->str + sizeof(r->nonce) + 1,
                  p->len - sizeof(r->nonce) - 1);

    if (!r->probing || n != (int64_t) r->probe_n) {
        /* one given up on: the next tick sends another */
        return;
    }

    r->probing = 0;

    if (r->deadline.timer_set) {
        ngx_del_timer(&r->deadline);
    }

    if (ngx_current_msec - r->probe_sent < r->lag
        && r->role_ok && r->library_ok)
    {
        if (++r->good >= r->need) {
            r->lagging = 0;
        }

    } else {
        ngx_http_collab_replica_distrust(r);
    }

    ngx_http_collab_replica_update(r);
}


static void
ngx_http_collab_replica_info_reply(redisAsyncContext *ac, void *reply,
    void *data)
{
    ngx_http_collab_replica_t *r = data;

    redisReply  *rep;

    rep = reply;

    if (r->checks) {
        r->checks--;
    }

    if (rep == NULL) {
        return;
    }

    r->role_ok = 0;

    if (rep->type != REDIS_REPLY_STRING && rep->type != REDIS_REPLY_STATUS) {
        r->role_why = "INFO failed";

    } else if (ngx_strstr(rep->str, "role:slave") == NULL) {
        r->role_why = "it is not a replica";

    } else if (ngx_strstr(rep->str, "master_link_status:up") == NULL) {
        r->role_why = "its link to the primary is down";

    } else {
        /* usable again only after good probes (replica_distrust) */
        r->role_ok = 1;
    }

    if (!r->role_ok) {
        ngx_http_collab_replica_distrust(r);
    }

    ngx_http_collab_replica_update(r);
}


static void
ngx_http_collab_replica_version_reply(redisAsyncContext *ac, void *reply,
    void *data)
{
    ngx_http_collab_replica_t *r = data;

    if (r->checks) {
        r->checks--;
    }

    if (reply == NULL) {
        return;
    }

    /* the library replicates from the primary: until then not usable */
    r->library_ok = (ngx_http_collab_store_version_ok(reply) == NGX_OK);

    if (!r->library_ok) {
        ngx_http_collab_replica_distrust(r);
    }

    ngx_http_collab_replica_update(r);
}


/* a change is logged once, and the documents follow it */

static void
ngx_http_collab_replica_update(ngx_http_collab_replica_t *r)
{
    ngx_uint_t                 usable;
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    usable = w->rcmd.state == NGX_HTTP_COLLAB_REDIS_READY
             && w->rsub.state == NGX_HTTP_COLLAB_REDIS_READY
             && r->listening && r->role_ok && r->library_ok && !r->lagging;

    if (usable == r->usable) {
        return;
    }

    r->usable = usable;
    r->since = ngx_current_msec;
    r->warned = 0;

    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_REPLICA_USABLE,
                                  usable ? 1 : -1);

    if (usable) {
        ngx_log_error(NGX_LOG_NOTICE, r->log, 0,
                      "collab: the replica \"%V\" is used for reads",
                      &r->addr);

    } else {
        ngx_log_error(NGX_LOG_WARN, r->log, 0,
                      "collab: the replica \"%V\" is no longer used for "
                      "reads: %s", &r->addr,
                      ngx_http_collab_replica_why(r));
        r->drop = 1;

        /* a replica that flaps is trusted later and later */
        r->need = ngx_min(r->need * 2, NGX_HTTP_COLLAB_REPLICA_GOOD_MAX);
    }

    if (!r->follow.posted) {
        ngx_post_event(&r->follow, &ngx_posted_events);
    }
}


static const char *
ngx_http_collab_replica_why(ngx_http_collab_replica_t *r)
{
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w->rcmd.state != NGX_HTTP_COLLAB_REDIS_READY
        || w->rsub.state != NGX_HTTP_COLLAB_REDIS_READY)
    {
        return "its connection is down";
    }

    if (!r->role_ok) {
        return r->role_why;
    }

    if (!r->library_ok) {
        return "it does not hold the function library";
    }

    if (!r->listening) {
        return "its probe channel is not followed";
    }

    return "replication lags more than replica_lag";
}


/*
 * From the posted event, outside hiredis callbacks: drop the links of a
 * replica no longer used, then move the channels.
 */

static void
ngx_http_collab_replica_follow(ngx_event_t *ev)
{
    ngx_http_collab_replica_t  *r;
    ngx_http_collab_worker_t   *w;

    r = ev->data;
    w = ngx_http_collab_worker;

    if (r->drop && !r->usable) {
        r->drop = 0;

        /* reads in flight there are sent to the primary */

        if (w->rcmd.ac && w->rcmd.ninflight) {
            ngx_http_collab_redis_kick(&w->rcmd, "the replica is not used");
        }

        /* its channels are lost at once, not after their UNSUBSCRIBE */

        if (w->rsub.ac) {
            ngx_http_collab_redis_kick(&w->rsub, "the replica is not used");
        }
    }

    r->drop = 0;

    ngx_http_collab_doc_redis_follow();

    ngx_http_collab_doc_redis_ready(r->usable ? &w->rsub : &w->sub);
}
