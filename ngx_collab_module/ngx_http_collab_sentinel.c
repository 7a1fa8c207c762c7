
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Redis Sentinel: "collab_redis sentinel:NAME sentinels=...".  A worker
 * keeps one more connection, to one sentinel at a time (the next one after
 * a failure): it asks for the primary of NAME (SENTINEL MASTER, which says
 * its config-epoch: an answer older than one already taken is a sentinel
 * that lags, and the next one is asked), then listens for +switch-master.
 * The command and subscriber connections go to the primary named last;
 * when it changes they reconnect at once, and the documents catch up from
 * the log as after any reconnect.  A connection to the primary that fails
 * has the same sentinel asked again within a second, and it is asked every
 * 30 s anyway: a missed event costs a reconnect, not the service.
 */


#define NGX_HTTP_COLLAB_SENTINEL_ASK    1000
#define NGX_HTTP_COLLAB_SENTINEL_REASK  30000


static void ngx_http_collab_sentinel_addr_reply(redisAsyncContext *ac,
    void *r, void *data);
static void ngx_http_collab_sentinel_event(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_collab_sentinel_follow(ngx_uint_t changed);
static void ngx_http_collab_sentinel_ask_handler(ngx_event_t *ev);


/* "host[:port]" at configuration time (a sentinel's port is 26379) */

ngx_int_t
ngx_http_collab_addr_parse(ngx_pool_t *pool, ngx_str_t *text,
    ngx_http_collab_addr_t *addr, in_port_t default_port)
{
    size_t     n;
    u_char     host[NGX_SOCKADDR_STRLEN + 1];
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *text;
    u.default_port = default_port;

    if (ngx_parse_url(pool, &u) != NGX_OK || u.naddrs == 0
        || u.addrs[0].sockaddr->sa_family == AF_UNIX)
    {
        return NGX_ERROR;
    }

    n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, host,
                      NGX_SOCKADDR_STRLEN, 0);

    return ngx_http_collab_addr_set(addr, host, n, u.port);
}


/*
 * An IP and a port, as a sentinel names them: a host name would be resolved
 * by hiredis with a blocking getaddrinfo() in the worker.
 */

ngx_int_t
ngx_http_collab_addr_set(ngx_http_collab_addr_t *addr, u_char *host,
    size_t len, ngx_int_t port)
{
#if (NGX_HAVE_INET6)
    u_char  in6[16];
#endif

    if (len == 0 || len > NGX_SOCKADDR_STRLEN || port <= 0 || port > 65535) {
        return NGX_ERROR;
    }

    if (ngx_inet_addr(host, len) == INADDR_NONE
#if (NGX_HAVE_INET6)
        && ngx_inet6_addr(host, len, in6) != NGX_OK
#endif
        )
    {
        return NGX_ERROR;
    }

    ngx_memcpy(addr->host, host, len);
    addr->host[len] = '\0';
    addr->port = (in_port_t) port;

    addr->text_len = ngx_sprintf(addr->text,
                                 ngx_strlchr(host, host + len, ':')
                                 ? "[%s]:%i" : "%s:%i",
                                 addr->host, port)
                     - addr->text;

    return NGX_OK;
}


/* connected to a sentinel: ask, then listen */

void
ngx_http_collab_sentinel_ready(ngx_http_collab_redis_t *rc)
{
    const char                   *argv[3];
    size_t                        argvlen[3];
    ngx_http_collab_main_conf_t  *mcf;

    mcf = rc->mcf;

    rc->heartbeat.handler = ngx_http_collab_sentinel_ask_handler;

    argv[0] = "SENTINEL";
    argvlen[0] = 8;
    argv[1] = "MASTER";
    argvlen[1] = 6;
    argv[2] = (const char *) mcf->sentinel_master.data;
    argvlen[2] = mcf->sentinel_master.len;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_sentinel_addr_reply,
                                  NULL, 3, argv, argvlen)
        != NGX_OK)
    {
        goto failed;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = "+switch-master";
    argvlen[1] = sizeof("+switch-master") - 1;

    if (ngx_http_collab_redis_raw(rc, ngx_http_collab_sentinel_event, NULL,
                                  2, argv, argvlen)
        != NGX_OK)
    {
        goto failed;
    }

    /* ready once it answers; a sentinel that does not is left */

    rc->watchdog.cancelable = 1;
    ngx_add_timer(&rc->watchdog, mcf->redis_timeout);

    return;

failed:

    /* not inside onConnect: the watchdog drops the link right after */

    rc->watchdog.cancelable = 1;
    ngx_add_timer(&rc->watchdog, 1);
}


static void
ngx_http_collab_sentinel_addr_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    size_t                     i;
    int64_t                    epoch;
    ngx_int_t                  port;
    ngx_uint_t                 changed;
    redisReply                *reply, *k, *v, *ip;
    ngx_http_collab_addr_t     addr, *primary;
    ngx_http_collab_redis_t   *rc;
    ngx_http_collab_worker_t  *w;

    rc = ac->data;
    reply = r;
    w = ngx_http_collab_worker;

    if (reply == NULL) {
        return;
    }

    ip = NULL;
    port = NGX_ERROR;
    epoch = -1;

    for (i = 0; reply->type == REDIS_REPLY_ARRAY && i + 1 < reply->elements;
         i += 2)
    {
        k = reply->element[i];
        v = reply->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }

        if (ngx_strcmp(k->str, "ip") == 0) {
            ip = v;

        } else if (ngx_strcmp(k->str, "port") == 0) {
            port = ngx_atoi((u_char *) v->str, v->len);

        } else if (ngx_strcmp(k->str, "config-epoch") == 0) {
            epoch = ngx_atoof((u_char *) v->str, v->len);
        }
    }

    if (ip == NULL
        || ngx_http_collab_addr_set(&addr, (u_char *) ip->str, ip->len, port)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: sentinel \"%V\" does not name the primary "
                      "\"%V\" by an IP and a port%s%s", &rc->addr,
                      &rc->mcf->sentinel_master,
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");

        /* the next sentinel is asked */
        redisAsyncDisconnect(ac);
        return;
    }

    if (epoch < w->primary_epoch) {
        ngx_log_error(NGX_LOG_WARN, rc->log, 0,
                      "collab: sentinel \"%V\" lags (config-epoch %L, "
                      "%L seen), asking the next one", &rc->addr, epoch,
                      w->primary_epoch);
        redisAsyncDisconnect(ac);
        return;
    }

    w->primary_epoch = epoch;
    primary = &w->primary;

    changed = primary->port != addr.port
              || ngx_strcmp(primary->host, addr.host) != 0;

    if (changed) {
        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "collab: sentinel \"%V\": the primary of \"%V\" is "
                      "\"%*s\"", &rc->addr, &rc->mcf->sentinel_master,
                      addr.text_len, addr.text);

        *primary = addr;
    }

    if (rc->state == NGX_HTTP_COLLAB_REDIS_SETUP) {
        ngx_http_collab_redis_setup_done(rc);
    }

    ngx_add_timer(&rc->heartbeat, NGX_HTTP_COLLAB_SENTINEL_REASK);

    ngx_http_collab_sentinel_follow(changed);
}


/* "+switch-master": "NAME old-ip old-port new-ip new-port" */

static void
ngx_http_collab_sentinel_event(redisAsyncContext *ac, void *r, void *data)
{
    u_char                   *f[5], *p, *last;
    size_t                    len[5];
    ngx_int_t                 port;
    ngx_uint_t                n;
    redisReply               *reply, *msg;
    ngx_str_t                *name;
    ngx_http_collab_addr_t    addr, *primary;
    ngx_http_collab_redis_t  *rc;

    rc = ac->data;
    reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || ngx_strcmp(reply->element[0]->str, "message") != 0
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    msg = reply->element[2];
    p = (u_char *) msg->str;
    last = p + msg->len;

    for (n = 0; n < 5 && p < last; n++) {
        f[n] = p;
        p = ngx_strlchr(p, last, ' ');
        if (p == NULL) {
            p = last;
        }

        len[n] = p - f[n];
        p++;
    }

    name = &rc->mcf->sentinel_master;

    if (n != 5 || len[0] != name->len
        || ngx_strncmp(f[0], name->data, name->len) != 0)
    {
        return;
    }

    port = ngx_atoi(f[4], len[4]);

    if (ngx_http_collab_addr_set(&addr, f[3], len[3], port) != NGX_OK) {
        return;
    }

    primary = &ngx_http_collab_worker->primary;

    ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                  "collab: sentinel \"%V\": failover of \"%V\" to \"%*s\"",
                  &rc->addr, name, addr.text_len, addr.text);

    if (primary->port == addr.port
        && ngx_strcmp(primary->host, addr.host) == 0)
    {
        return;
    }

    *primary = addr;

    /* the failover's epoch is newer: answers of lagging sentinels are not */
    ngx_http_collab_worker->primary_epoch++;

    ngx_http_collab_sentinel_follow(1);
}


/* the command and subscriber connections go where the sentinels say */

static void
ngx_http_collab_sentinel_follow(ngx_uint_t changed)
{
    ngx_uint_t                i;
    ngx_http_collab_redis_t  *rc[2];

    rc[0] = &ngx_http_collab_worker->cmd;
    rc[1] = &ngx_http_collab_worker->sub;

    for (i = 0; i < 2; i++) {

        if (changed) {
            ngx_http_collab_redis_kick(rc[i], "the primary moved");
            continue;
        }

        /* the first answer: nothing was connected yet */

        if (rc[i]->ac == NULL && !rc[i]->reconnect.timer_set) {
            ngx_http_collab_redis_kick(rc[i], "connecting");
        }
    }
}


/*
 * A connection to the primary failed: ask again, from outside any hiredis
 * callback and at most once a second.
 */

void
ngx_http_collab_sentinel_refresh(void)
{
    ngx_http_collab_redis_t  *rc;

    rc = &ngx_http_collab_worker->watch;

    if (rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || (rc->heartbeat.timer_set
            && rc->heartbeat.timer.key
               <= ngx_current_msec + NGX_HTTP_COLLAB_SENTINEL_ASK))
    {
        return;
    }

    ngx_add_timer(&rc->heartbeat, NGX_HTTP_COLLAB_SENTINEL_ASK);
}


static void
ngx_http_collab_sentinel_ask_handler(ngx_event_t *ev)
{
    ngx_http_collab_redis_t  *rc;

    rc = ev->data;

    if (rc->state == NGX_HTTP_COLLAB_REDIS_READY) {
        ngx_http_collab_redis_kick(rc, "asking the sentinel again");
    }
}
