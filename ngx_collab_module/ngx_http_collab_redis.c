
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * hiredis 0.14 on nginx's event loop.  A worker has two connections, one
 * for commands and one for pub/sub, each a ngx_http_collab_redis_t that
 * lives as long as the worker and outlives any number of hiredis contexts.
 *
 * Events are registered level-triggered: hiredis reads at most 16 KB per
 * call and would otherwise stall on edge-triggered epoll.  hiredis closes
 * the socket itself after our cleanup hook, so the hook releases the nginx
 * connection without close().
 */


#define NGX_HTTP_COLLAB_BACKOFF_MIN  100
#define NGX_HTTP_COLLAB_BACKOFF_MAX  5000


static void ngx_http_collab_redis_connect(ngx_http_collab_redis_t *rc);
static void ngx_http_collab_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_collab_redis_watchdog_handler(ngx_event_t *ev);
static void ngx_http_collab_redis_kick_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_collab_redis_target(ngx_http_collab_redis_t *rc);
static void ngx_http_collab_redis_schedule(ngx_http_collab_redis_t *rc);
static void ngx_http_collab_redis_drop(ngx_http_collab_redis_t *rc,
    const char *why);
static void ngx_http_collab_redis_read_handler(ngx_event_t *ev);
static void ngx_http_collab_redis_write_handler(ngx_event_t *ev);
static void ngx_http_collab_redis_add_read(void *data);
static void ngx_http_collab_redis_del_read(void *data);
static void ngx_http_collab_redis_add_write(void *data);
static void ngx_http_collab_redis_del_write(void *data);
static void ngx_http_collab_redis_cleanup(void *data);
static void ngx_http_collab_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_collab_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_http_collab_redis_setup_reply(redisAsyncContext *ac,
    void *r, void *data);
static void ngx_http_collab_redis_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_collab_redis_track(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd);
static void ngx_http_collab_redis_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_collab_redis_heartbeat_reply(redisAsyncContext *ac,
    void *r, void *data);


ngx_int_t
ngx_http_collab_redis_init(ngx_cycle_t *cycle, ngx_http_collab_redis_t *rc,
    ngx_http_collab_main_conf_t *mcf, unsigned subscriber, const char *name)
{
    rc->mcf = mcf;
    rc->log = cycle->log;
    rc->addr = mcf->redis_addr;
    rc->subscriber = subscriber;

    if (rc->replica) {
        rc->target = *mcf->replica;
        rc->addr.len = rc->target.text_len;
        rc->addr.data = rc->target.text;
    }

    rc->name = name;
    rc->state = NGX_HTTP_COLLAB_REDIS_DOWN;
    rc->backoff = NGX_HTTP_COLLAB_BACKOFF_MIN;

    ngx_queue_init(&rc->inflight);
    ngx_queue_init(&rc->acks);

    rc->reconnect.handler = ngx_http_collab_redis_reconnect_handler;
    rc->reconnect.data = rc;
    rc->reconnect.log = cycle->log;
    rc->reconnect.cancelable = 1;

    /*
     * The watchdog stays non-cancelable while commands are in flight, so
     * that a quitting worker answers every pending request before it exits.
     */

    rc->watchdog.handler = ngx_http_collab_redis_watchdog_handler;
    rc->watchdog.data = rc;
    rc->watchdog.log = cycle->log;

    rc->heartbeat.handler = ngx_http_collab_redis_heartbeat_handler;
    rc->heartbeat.data = rc;
    rc->heartbeat.log = cycle->log;
    rc->heartbeat.cancelable = 1;

    rc->kick.handler = ngx_http_collab_redis_kick_handler;
    rc->kick.data = rc;
    rc->kick.log = cycle->log;

    ngx_http_collab_redis_connect(rc);

    return NGX_OK;
}


void
ngx_http_collab_redis_exit(ngx_http_collab_redis_t *rc)
{
    rc->exiting = 1;

    if (rc->reconnect.timer_set) {
        ngx_del_timer(&rc->reconnect);
    }

    if (rc->watchdog.timer_set) {
        ngx_del_timer(&rc->watchdog);
    }

    if (rc->heartbeat.timer_set) {
        ngx_del_timer(&rc->heartbeat);
    }

    if (rc->kick.posted) {
        ngx_delete_posted_event(&rc->kick);
    }

    if (rc->ac) {
        redisAsyncFree(rc->ac);
        rc->ac = NULL;
    }
}


static void
ngx_http_collab_redis_connect(ngx_http_collab_redis_t *rc)
{
    redisAsyncContext            *ac;
    ngx_event_t                  *rev, *wev;
    ngx_connection_t             *c;
    ngx_http_collab_main_conf_t  *mcf;

    mcf = rc->mcf;

    if (rc->replica) {
        ac = redisAsyncConnect((char *) rc->target.host, rc->target.port);

    } else if (mcf->sentinel_master.len || mcf->cluster_seeds) {
        if (ngx_http_collab_redis_target(rc) != NGX_OK) {
            /* the primary is not known yet: the sentinels connect us */
            rc->state = NGX_HTTP_COLLAB_REDIS_DOWN;
            return;
        }

        ac = redisAsyncConnect((char *) rc->target.host, rc->target.port);

    } else if (mcf->redis_unix.len) {
        ac = redisAsyncConnectUnix((char *) mcf->redis_unix.data);

    } else {
        ac = redisAsyncConnect((char *) mcf->redis_host.data,
                               mcf->redis_port);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s connection: out of memory", rc->name);
        ngx_http_collab_redis_schedule(rc);
        return;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s connection to \"%V\" failed: %s",
                      rc->name, &rc->addr, ac->errstr);
        redisAsyncFree(ac);
        ngx_http_collab_redis_schedule(rc);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rc->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_collab_redis_schedule(rc);
        return;
    }

    rev = c->read;
    wev = c->write;

    c->data = rc;
    rev->handler = ngx_http_collab_redis_read_handler;
    wev->handler = ngx_http_collab_redis_write_handler;
    rev->log = rc->log;
    wev->log = rc->log;
    c->log = rc->log;

    rc->ac = ac;
    rc->connection = c;
    rc->state = NGX_HTTP_COLLAB_REDIS_CONNECTING;

    ac->data = rc;
    ac->ev.data = rc;
    ac->ev.addRead = ngx_http_collab_redis_add_read;
    ac->ev.delRead = ngx_http_collab_redis_del_read;
    ac->ev.addWrite = ngx_http_collab_redis_add_write;
    ac->ev.delWrite = ngx_http_collab_redis_del_write;
    ac->ev.cleanup = ngx_http_collab_redis_cleanup;

    /* the adapter must be in place: this adds the write event */

    redisAsyncSetConnectCallback(ac, ngx_http_collab_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_http_collab_redis_on_disconnect);

    /* the watchdog doubles as the connect timeout */

    rc->watchdog.cancelable = 1;
    ngx_add_timer(&rc->watchdog, rc->mcf->redis_connect_timeout);
}


/* sentinel mode: the next sentinel to ask, or the primary they named */

static ngx_int_t
ngx_http_collab_redis_target(ngx_http_collab_redis_t *rc)
{
    ngx_http_collab_addr_t       *a;
    ngx_http_collab_main_conf_t  *mcf;

    mcf = rc->mcf;

    if (mcf->cluster_seeds) {
        return ngx_http_collab_cluster_target(rc);
    }

    if (rc->sentinel) {
        a = mcf->sentinels->elts;
        a = &a[rc->next_sentinel % mcf->sentinels->nelts];

    } else {
        a = &ngx_http_collab_worker->primary;

        if (a->port == 0) {
            return NGX_DECLINED;
        }
    }

    rc->target = *a;
    rc->addr.len = rc->target.text_len;
    rc->addr.data = rc->target.text;

    return NGX_OK;
}


/* reconnects at once, e.g. to the primary that the sentinels now name */

void
ngx_http_collab_redis_kick(ngx_http_collab_redis_t *rc, const char *why)
{
    rc->backoff = NGX_HTTP_COLLAB_BACKOFF_MIN;

    if (rc->ac) {
        /* not a failure: no other sentinel, no asking again */
        rc->kicked = 1;
        ngx_http_collab_redis_drop(rc, why);
        return;
    }

    if (rc->exiting || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (rc->reconnect.timer_set) {
        ngx_del_timer(&rc->reconnect);
    }

    ngx_http_collab_redis_connect(rc);
}


/* kick() from inside a hiredis callback: after the callbacks return */

void
ngx_http_collab_redis_kick_later(ngx_http_collab_redis_t *rc, const char *why)
{
    rc->kick_why = why;

    if (!rc->kick.posted) {
        ngx_post_event(&rc->kick, &ngx_posted_events);
    }
}


static void
ngx_http_collab_redis_kick_handler(ngx_event_t *ev)
{
    ngx_http_collab_redis_t  *rc;

    rc = ev->data;

    ngx_http_collab_redis_kick(rc, rc->kick_why);
}


static void
ngx_http_collab_redis_schedule(ngx_http_collab_redis_t *rc)
{
    rc->state = NGX_HTTP_COLLAB_REDIS_DOWN;

    if (rc->sentinel && !rc->kicked) {
        /* this sentinel failed: the next one */
        rc->next_sentinel++;

    } else if (rc->mcf->sentinel_master.len && !rc->sentinel && !rc->replica
               && !rc->kicked
               && !rc->exiting && !ngx_exiting && !ngx_quit && !ngx_terminate)
    {
        /* the primary may have moved: the sentinels know */
        ngx_http_collab_sentinel_refresh();
    }

    rc->kicked = 0;

    if (rc->replica) {
        /* not usable: reads and channels go to the primary */
        ngx_http_collab_replica_lost(rc);
    }

    if (rc->mcf->cluster_seeds && !rc->exiting) {
        /* a node failed: the map may name its replica now */
        ngx_http_collab_cluster_refresh();

        if (!ngx_http_collab_cluster_node_used(rc)) {
            return;
        }
    }

    if (rc->exiting || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (!rc->reconnect.timer_set) {
        ngx_add_timer(&rc->reconnect, rc->backoff);
    }

    rc->backoff *= 2;

    if (rc->backoff > NGX_HTTP_COLLAB_BACKOFF_MAX) {
        rc->backoff = NGX_HTTP_COLLAB_BACKOFF_MAX;
    }
}


static void
ngx_http_collab_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_collab_redis_t  *rc;

    rc = ev->data;

    if (rc->ac == NULL) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_RECONNECTS);
        ngx_http_collab_redis_connect(rc);
    }
}


/*
 * Drops the context from outside hiredis callbacks: every pending command
 * gets its callback with a NULL reply, then the link is rebuilt later.
 */

static void
ngx_http_collab_redis_drop(ngx_http_collab_redis_t *rc, const char *why)
{
    ngx_uint_t          level;
    redisAsyncContext  *ac;

    ac = rc->ac;
    if (ac == NULL) {
        return;
    }

    /* a deliberate reconnect (kick) is no failure */
    level = rc->kicked ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, rc->log, 0,
                  "collab: redis %s connection to \"%V\" dropped: %s",
                  rc->name, &rc->addr, why);

    rc->ac = NULL;

    if (rc->state >= NGX_HTTP_COLLAB_REDIS_SETUP) {
        /* on_disconnect will be called by hiredis */
        redisAsyncFree(ac);
        return;
    }

    redisAsyncFree(ac);

    ngx_http_collab_redis_schedule(rc);
}


static void
ngx_http_collab_redis_watchdog_handler(ngx_event_t *ev)
{
    ngx_msec_t                timeout, age;
    ngx_http_collab_cmd_t    *cmd;
    ngx_http_collab_redis_t  *rc;

    rc = ev->data;

    if (rc->ac == NULL) {
        return;
    }

    if (rc->state == NGX_HTTP_COLLAB_REDIS_CONNECTING) {
        ngx_http_collab_redis_drop(rc, "connect timed out");
        return;
    }

    timeout = rc->mcf->redis_timeout;

    if (!ngx_queue_empty(&rc->inflight)) {
        cmd = ngx_queue_data(ngx_queue_head(&rc->inflight),
                             ngx_http_collab_cmd_t, redis_link);

        age = ngx_current_msec - cmd->sent;

        if (age >= timeout) {
            ngx_http_collab_redis_drop(rc, "command timed out");
            return;
        }

        ev->cancelable = 0;
        ngx_add_timer(ev, timeout - age);
        return;
    }

    if (rc->state == NGX_HTTP_COLLAB_REDIS_SETUP) {
        ngx_http_collab_redis_drop(rc, rc->setup_pending ? "setup timed out"
                                                         : "setup failed");
        return;
    }
}


static void
ngx_http_collab_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_collab_redis_t  *rc;

    c = ev->data;
    rc = c->data;

    if (c->close) {
        /* worker_shutdown_timeout */
        c->close = 0;
        rc->exiting = 1;
        ngx_http_collab_redis_drop(rc, "worker is shutting down");
        return;
    }

    if (rc->ac) {
        redisAsyncHandleRead(rc->ac);
    }
}


static void
ngx_http_collab_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_collab_redis_t  *rc;

    c = ev->data;
    rc = c->data;

    if (rc->ac) {
        redisAsyncHandleWrite(rc->ac);
    }
}


static void
ngx_http_collab_redis_add_read(void *data)
{
    ngx_http_collab_redis_t *rc = data;

    ngx_event_t  *rev;

    rev = rc->connection->read;

    if (!rev->active) {
        if (ngx_add_event(rev, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
            ngx_log_error(NGX_LOG_ALERT, rc->log, 0,
                          "collab: redis %s: cannot add read event",
                          rc->name);
        }
    }
}


static void
ngx_http_collab_redis_del_read(void *data)
{
    ngx_http_collab_redis_t *rc = data;

    ngx_event_t  *rev;

    rev = rc->connection->read;

    if (rev->active) {
        (void) ngx_del_event(rev, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_collab_redis_add_write(void *data)
{
    ngx_http_collab_redis_t *rc = data;

    ngx_event_t  *wev;

    wev = rc->connection->write;

    if (!wev->active) {
        if (ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
            ngx_log_error(NGX_LOG_ALERT, rc->log, 0,
                          "collab: redis %s: cannot add write event",
                          rc->name);
        }
    }
}


static void
ngx_http_collab_redis_del_write(void *data)
{
    ngx_http_collab_redis_t *rc = data;

    ngx_event_t  *wev;

    wev = rc->connection->write;

    if (wev->active) {
        (void) ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }
}


/* what ngx_close_connection() does, except close(): hiredis closes the fd */

static void
ngx_http_collab_redis_cleanup(void *data)
{
    ngx_http_collab_redis_t *rc = data;

    ngx_connection_t  *c;

    c = rc->connection;
    if (c == NULL) {
        return;
    }

    rc->connection = NULL;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->active || c->write->active) {
        /* the fd stays open until hiredis closes it: leave epoll now */
        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
        }
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
}


static void
ngx_http_collab_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_collab_redis_t *rc = ac->data;

    const char                   *argv[2];
    size_t                        argvlen[2];
    u_char                        db[NGX_INT_T_LEN];
    ngx_http_collab_main_conf_t  *mcf;

    if (rc->watchdog.timer_set) {
        ngx_del_timer(&rc->watchdog);
    }

    if (status != REDIS_OK) {
        /* hiredis frees the context after we return */

        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s connection to \"%V\" failed: %s",
                      rc->name, &rc->addr,
                      ac->errstr[0] ? ac->errstr : ac->c.errstr);

        rc->ac = NULL;
        ngx_http_collab_redis_schedule(rc);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, rc->log, 0,
                  "collab: redis %s connection to \"%V\" established",
                  rc->name, &rc->addr);

    mcf = rc->mcf;
    rc->state = NGX_HTTP_COLLAB_REDIS_SETUP;
    rc->setup_pending = 0;

    if (rc->sentinel) {
        ngx_http_collab_sentinel_ready(rc);
        return;
    }

    /* commands pipeline behind these, so nothing waits for the replies */

    if (mcf->redis_password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) mcf->redis_password.data;
        argvlen[1] = mcf->redis_password.len;

        if (ngx_http_collab_redis_raw(rc, ngx_http_collab_redis_setup_reply,
                                      NULL, 2, argv, argvlen)
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (rc->cluster_map) {
        ngx_http_collab_cluster_ready(rc);
        return;
    }

    if (mcf->redis_db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", mcf->redis_db) - db;

        if (ngx_http_collab_redis_raw(rc, ngx_http_collab_redis_setup_reply,
                                      NULL, 2, argv, argvlen)
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (!rc->subscriber && !rc->replica) {
        /* a replica gets the library from its primary: replica.c checks */
        if (ngx_http_collab_store_setup(rc) != NGX_OK) {
            goto failed;
        }
    }

    if (rc->setup_pending == 0) {
        ngx_http_collab_redis_setup_done(rc);
        return;
    }

    rc->watchdog.cancelable = 1;
    ngx_add_timer(&rc->watchdog, mcf->redis_timeout);

    return;

failed:

    /*
     * Not freed here (hiredis 0.14 must not be freed inside onConnect):
     * the watchdog drops the connection, in state SETUP, right after.
     */

    ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                  "collab: redis %s connection: a setup command could not "
                  "be queued", rc->name);

    rc->watchdog.cancelable = 1;
    ngx_add_timer(&rc->watchdog, 1);
}


void
ngx_http_collab_redis_setup_done(ngx_http_collab_redis_t *rc)
{
    if (rc->watchdog.timer_set && ngx_queue_empty(&rc->inflight)) {
        ngx_del_timer(&rc->watchdog);
    }

    rc->state = NGX_HTTP_COLLAB_REDIS_READY;
    rc->backoff = NGX_HTTP_COLLAB_BACKOFF_MIN;

    ngx_log_error(NGX_LOG_INFO, rc->log, 0,
                  "collab: redis %s connection ready", rc->name);

    if (rc->sentinel || rc->cluster_map) {
        return;
    }

    if (rc->subscriber) {
        rc->nshard = 0;
        rc->heartbeat_pending = 0;

        if (!rc->heartbeat.timer_set) {
            ngx_add_timer(&rc->heartbeat, rc->mcf->redis_timeout);
        }
    }

    if (rc->replica) {
        /* used once it proves to follow the primary closely */
        ngx_http_collab_replica_ready(rc);
        return;
    }

    ngx_http_collab_doc_redis_ready(rc);
}


/*
 * A subscribed connection gets no replies of its own, so a Redis that hangs
 * would go unnoticed: it re-subscribes to a private channel every timeout
 * and expects the confirmation before the next round.
 */

static void
ngx_http_collab_redis_heartbeat_handler(ngx_event_t *ev)
{
    const char               *argv[2];
    size_t                    argvlen[2];
    ngx_http_collab_redis_t  *rc;

    rc = ev->data;

    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY) {
        return;
    }

    if (rc->heartbeat_pending) {
        ngx_http_collab_redis_drop(rc, "heartbeat timed out");
        return;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = "collab:__heartbeat__";
    argvlen[1] = sizeof("collab:__heartbeat__") - 1;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_redis_heartbeat_reply,
                                  rc, 2, argv, argvlen)
        == NGX_OK)
    {
        rc->heartbeat_pending = 1;
    }

    ngx_add_timer(&rc->heartbeat, rc->mcf->redis_timeout);
}


static void
ngx_http_collab_redis_heartbeat_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    ngx_http_collab_redis_t *rc = data;

    redisReply  *reply;

    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    if (ngx_strcmp(reply->element[0]->str, "subscribe") == 0) {
        rc->heartbeat_pending = 0;
    }
}


static void
ngx_http_collab_redis_setup_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    ngx_http_collab_redis_t  *rc;
    redisReply               *reply;

    rc = ac->data;
    reply = r;

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s connection setup failed: %s",
                      rc->name, reply->str);

        /* leave the callback before the context is freed */
        redisAsyncDisconnect(ac);
        return;
    }

    if (--rc->setup_pending == 0) {
        ngx_http_collab_redis_setup_done(rc);
    }
}


static void
ngx_http_collab_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_collab_redis_t *rc = ac->data;

    ngx_uint_t  level;

    level = (rc->exiting || rc->kicked) ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, rc->log, 0,
                  "collab: redis %s connection to \"%V\" lost%s%s",
                  rc->name, &rc->addr,
                  status == REDIS_OK ? "" : ": ",
                  status == REDIS_OK ? "" : ac->errstr);

    rc->ac = NULL;

    if (rc->watchdog.timer_set) {
        ngx_del_timer(&rc->watchdog);
    }

    if (rc->heartbeat.timer_set) {
        ngx_del_timer(&rc->heartbeat);
    }

    if (rc->subscriber && status != REDIS_OK) {
        /* cluster: a MOVED to SSUBSCRIBE ends the connection */
        (void) ngx_http_collab_cluster_moved(rc, ac->errstr);
    }

    /*
     * Pending commands and subscriptions were answered with NULL replies
     * before this: their readers wait for ngx_http_collab_doc_redis_ready().
     */

    ngx_http_collab_redis_schedule(rc);
}


/* a command without a session: setup and subscriptions */

ngx_int_t
ngx_http_collab_redis_raw(ngx_http_collab_redis_t *rc, redisCallbackFn *fn,
    void *data, int argc, const char **argv, const size_t *argvlen)
{
    if (rc->ac == NULL) {
        return NGX_ERROR;
    }

    if (redisAsyncCommandArgv(rc->ac, fn, data, argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s command failed", rc->name);
        return NGX_ERROR;
    }

    if (fn == ngx_http_collab_redis_setup_reply) {
        rc->setup_pending++;
    }

    return NGX_OK;
}


ngx_http_collab_cmd_t *
ngx_http_collab_cmd_alloc(ngx_http_collab_session_t *s, size_t extra)
{
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_alloc(sizeof(ngx_http_collab_cmd_t) + extra,
                    s ? s->connection->log : ngx_cycle->log);
    if (cmd == NULL) {
        return NULL;
    }

    ngx_memzero(cmd, sizeof(ngx_http_collab_cmd_t));

    cmd->session = s;

    if (s) {
        ngx_queue_insert_tail(&s->cmds, &cmd->session_link);
        s->ncmds++;
    }

    return cmd;
}


void
ngx_http_collab_cmd_free(ngx_http_collab_cmd_t *cmd)
{
    if (cmd->session) {
        ngx_queue_remove(&cmd->session_link);
        cmd->session->ncmds--;
        cmd->session->read_reserved -= cmd->budget;
        cmd->session = NULL;
    }

    if (cmd->sub) {
        cmd->sub->read = NULL;
        cmd->sub = NULL;
    }

    if (cmd->fmt) {
        redisFreeCommand(cmd->fmt);
    }

    ngx_free(cmd);
}


/* for commands whose reply nobody needs (publish, audit) */

void
ngx_http_collab_cmd_discard(ngx_http_collab_cmd_t *cmd, redisReply *reply)
{
    ngx_http_collab_cmd_free(cmd);
}


/*
 * Sends a command owned by a session.  On failure the command is freed:
 * NGX_BUSY tells the caller to answer "rate_limited" (the session has its
 * share of the pipeline in flight), NGX_DECLINED "unavailable".
 */

ngx_int_t
ngx_http_collab_redis_command(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd, int argc, const char **argv,
    const size_t *argvlen)
{
    /* the command itself is counted in ncmds */

    if (cmd->session
        && cmd->session->ncmds > rc->mcf->redis_session_inflight)
    {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_RATE_LIMITED
                                   + NGX_HTTP_COLLAB_LIMIT_REDIS);
        ngx_http_collab_cmd_free(cmd);
        return NGX_BUSY;
    }

    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || rc->ninflight >= rc->mcf->redis_max_inflight)
    {
        if (rc->ac && rc->ninflight >= rc->mcf->redis_max_inflight
            && rc->full_logged != ngx_time())
        {
            /* once a second at most: this is the flood it protects from */
            rc->full_logged = ngx_time();

            ngx_log_error(NGX_LOG_WARN, rc->log, 0,
                          "collab: %ui Redis commands in flight, refusing "
                          "more", rc->ninflight);
        }

        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_ERRORS);
        ngx_http_collab_cmd_free(cmd);
        return NGX_DECLINED;
    }

    if (ngx_http_collab_worker->cluster) {
        /* kept to be sent again after MOVED or ASK */

        if (ngx_http_collab_cluster_format(cmd, argc, argv, argvlen)
            != NGX_OK
            || ngx_http_collab_redis_send(rc, cmd) != NGX_OK)
        {
            ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_ERRORS);
            ngx_http_collab_cmd_free(cmd);
            return NGX_DECLINED;
        }

        ngx_http_collab_cluster_sent(cmd);

        return NGX_OK;
    }

    if (redisAsyncCommandArgv(rc->ac, ngx_http_collab_redis_reply, cmd,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_ERRORS);
        ngx_http_collab_cmd_free(cmd);
        return NGX_DECLINED;
    }

    ngx_http_collab_redis_track(rc, cmd);

    return NGX_OK;
}


/* cluster mode: the command's kept text, first sent or redirected */

ngx_int_t
ngx_http_collab_redis_send(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd)
{
    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || rc->ninflight >= rc->mcf->redis_max_inflight)
    {
        return NGX_DECLINED;
    }

    if (redisAsyncFormattedCommand(rc->ac, ngx_http_collab_redis_reply, cmd,
                                   cmd->fmt, cmd->fmt_len)
        != REDIS_OK)
    {
        return NGX_DECLINED;
    }

    ngx_http_collab_redis_track(rc, cmd);

    return NGX_OK;
}


/* the command is in flight on rc: the watchdog times it */

static void
ngx_http_collab_redis_track(ngx_http_collab_redis_t *rc,
    ngx_http_collab_cmd_t *cmd)
{
    cmd->rc = rc;
    cmd->sent = ngx_current_msec;
    ngx_queue_insert_tail(&rc->inflight, &cmd->redis_link);
    rc->ninflight++;

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_COMMANDS);
    /* summed over the connections (primary, replica, cluster nodes) */
    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_REDIS_INFLIGHT, 1);

    if (!rc->watchdog.timer_set) {
        rc->watchdog.cancelable = 0;
        ngx_add_timer(&rc->watchdog, rc->mcf->redis_timeout);
    }
}


static void
ngx_http_collab_redis_reply(redisAsyncContext *ac, void *r, void *data)
{
    ngx_http_collab_cmd_t *cmd = data;

    ngx_http_collab_redis_t  *rc;

    rc = cmd->rc;

    ngx_queue_remove(&cmd->redis_link);
    rc->ninflight--;

    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_REDIS_INFLIGHT, -1);

    if (r && ((redisReply *) r)->type == REDIS_REPLY_ERROR && cmd->fmt
        && !rc->exiting
        && (cmd->session || cmd->doc_owner || cmd->by_name)
        && ngx_http_collab_cluster_redirect(cmd, r) == NGX_OK)
    {
        /* MOVED, ASK: sent again, its reply comes later */
        return;
    }

    if (r == NULL || ((redisReply *) r)->type == REDIS_REPLY_ERROR) {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_REDIS_ERRORS);

        if (r && !rc->replica
            && ngx_strncmp(((redisReply *) r)->str, "READONLY", 8) == 0)
        {
            /*
             * A replica now (after a failover): the command is answered
             * as if the link was lost, and the primary is looked up again.
             */

            if (!(ac->c.flags & REDIS_DISCONNECTING)) {
                ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                              "collab: redis %s connection to \"%V\" "
                              "reached a replica: %s", rc->name, &rc->addr,
                              ((redisReply *) r)->str);
                redisAsyncDisconnect(ac);
            }

            r = NULL;

        } else if (r && ngx_http_collab_cluster_unserved(r)) {
            /* a redirect not followed, CLUSTERDOWN: as if the link was lost */
            ngx_log_error(NGX_LOG_INFO, rc->log, 0,
                          "collab: redis %s connection to \"%V\": %s, the "
                          "command is answered \"unavailable\"", rc->name,
                          &rc->addr, ((redisReply *) r)->str);
            r = NULL;
        }

    } else {
        ngx_http_collab_metrics_observe(NGX_HTTP_COLLAB_H_REDIS,
                                        (uint64_t) (ngx_current_msec
                                                    - cmd->sent) * 1000);
    }

    if (ngx_queue_empty(&rc->inflight) && rc->watchdog.timer_set
        && rc->state == NGX_HTTP_COLLAB_REDIS_READY)
    {
        ngx_del_timer(&rc->watchdog);
    }

    if ((cmd->session == NULL && cmd->doc_owner == NULL && !cmd->by_name)
        || rc->exiting)
    {
        /* the session left while the command was in flight */

        if (cmd->doc_owner) {
            /* an ACL load cut by the exit: the document forgets it */
            cmd->doc_owner->acl_cmd = NULL;
        }

        ngx_http_collab_cmd_free(cmd);
        return;
    }

    cmd->handler(cmd, r);
}
