
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
 * a failure): it asks for the primary of NAME, then listens for
 * +switch-master.  The command and subscriber connections go to the
 * primary named last; when it changes they reconnect at once, and the
 * documents catch up from the log as after any reconnect.  A command
 * connection that loses its primary asks the sentinels again (at most once
 * a second), so a missed event costs a reconnect, not the service.
 */


#define NGX_HTTP_COLLAB_SENTINEL_ASK  1000


static void ngx_http_collab_sentinel_addr_reply(redisAsyncContext *ac,
    void *r, void *data);
static void ngx_http_collab_sentinel_event(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_collab_sentinel_follow(ngx_uint_t changed);
static void ngx_http_collab_sentinel_ask_handler(ngx_event_t *ev);


/* "host[:port]" at configuration time; a sentinel's port is 26379 */

ngx_int_t
ngx_http_collab_addr_parse(ngx_pool_t *pool, ngx_str_t *text,
    ngx_http_collab_addr_t *addr)
{
    size_t     n;
    u_char     host[NGX_SOCKADDR_STRLEN + 1];
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *text;
    u.default_port = 26379;

    if (ngx_parse_url(pool, &u) != NGX_OK || u.naddrs == 0
        || u.addrs[0].sockaddr->sa_family == AF_UNIX)
    {
        return NGX_ERROR;
    }

    n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, host,
                      NGX_SOCKADDR_STRLEN, 0);

    if (n > 2 && host[0] == '[') {
        return ngx_http_collab_addr_set(addr, host + 1, n - 2, u.port);
    }

    return ngx_http_collab_addr_set(addr, host, n, u.port);
}


/* an IP and a port, as a sentinel names them */

ngx_int_t
ngx_http_collab_addr_set(ngx_http_collab_addr_t *addr, u_char *host,
    size_t len, ngx_int_t port)
{
    if (len == 0 || len > NGX_SOCKADDR_STRLEN || port <= 0 || port > 65535
        || ngx_strlchr(host, host + len, ' ') != NULL)
    {
        return NGX_ERROR;
    }

    ngx_memcpy(addr->host, host, len);
    addr->host[len] = '\0';
    addr->port = (in_port_t) port;

    addr->text_len = ngx_sprintf(addr->text,
                                 ngx_strlchr(host, host + len, ':')
                                 ? "[%s]:%d" : "%s:%d",
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
    argv[1] = "get-master-addr-by-name";
    argvlen[1] = sizeof("get-master-addr-by-name") - 1;
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

    ngx_http_collab_redis_setup_done(rc);

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
    ngx_int_t                 port;
    ngx_uint_t                changed;
    redisReply               *reply, *h, *p;
    ngx_http_collab_addr_t    addr, *primary;
    ngx_http_collab_redis_t  *rc;

    rc = ac->data;
    reply = r;

    if (reply == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: sentinel \"%V\" does not know the primary "
                      "\"%V\"%s%s", &rc->addr, &rc->mcf->sentinel_master,
                      reply->type == REDIS_REPLY_ERROR ? ": " : "",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");

        /* the next sentinel is asked */
        redisAsyncDisconnect(ac);
        return;
    }

    h = reply->element[0];
    p = reply->element[1];
    port = ngx_atoi((u_char *) p->str, p->len);

    if (ngx_http_collab_addr_set(&addr, (u_char *) h->str, h->len, port)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: sentinel \"%V\" names an invalid primary "
                      "address", &rc->addr);
        redisAsyncDisconnect(ac);
        return;
    }

    primary = &ngx_http_collab_worker->primary;

    changed = primary->port != addr.port
              || ngx_strcmp(primary->host, addr.host) != 0;

    if (changed) {
        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "collab: sentinel \"%V\": the primary of \"%V\" is "
                      "\"%*s\"", &rc->addr, &rc->mcf->sentinel_master,
                      addr.text_len, addr.text);

        *primary = addr;
    }

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

    if (rc->state != NGX_HTTP_COLLAB_REDIS_READY || rc->heartbeat.timer_set) {
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
        ngx_http_collab_redis_kick(rc, "asking the sentinels again");
    }
}
