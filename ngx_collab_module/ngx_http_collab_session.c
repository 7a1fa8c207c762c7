
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/rand.h>
#include "ngx_http_collab_module.h"


/*
 * A session is one client connection, whatever its transport.  It lives in
 * the request pool; everything it hands out (Redis commands, memberships,
 * queued messages) is cut or released by the request cleanup, which runs
 * exactly once on every way out of the request.
 *
 * Outbound messages go through a byte-bounded queue of references to
 * shared messages; the queue is written from the connection's own write
 * event, so everything that arrives in one event loop turn goes out in one
 * writev().
 */


#define NGX_HTTP_COLLAB_FREE_OUT_MAX  4096


static ngx_http_collab_out_t *ngx_http_collab_out_get(ngx_log_t *log);
static void ngx_http_collab_out_put(ngx_http_collab_out_t *out);
static void ngx_http_collab_session_append(ngx_http_collab_session_t *s,
    ngx_http_collab_out_t *out, size_t len);
static void ngx_http_collab_session_ping_handler(ngx_event_t *ev);
static void ngx_http_collab_session_linger_handler(ngx_event_t *ev);
static void ngx_http_collab_session_drain_handler(ngx_event_t *ev);
static void ngx_http_collab_session_write_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_session_identity(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_uint_t transport, json_t **claims,
    ngx_str_t *user, ngx_int_t *status);
static ngx_http_collab_session_t *ngx_http_collab_session_alloc(
    ngx_http_request_t *r, ngx_http_collab_loc_conf_t *lcf,
    ngx_uint_t transport, ngx_int_t *status);
static void ngx_http_collab_session_init_events(ngx_http_collab_session_t *s,
    ngx_log_t *log);
static ngx_int_t ngx_http_collab_session_identify(
    ngx_http_collab_session_t *s, ngx_uint_t transport, ngx_str_t *user,
    json_t *claims);
static void ngx_http_collab_session_del_timers(ngx_http_collab_session_t *s);
static void ngx_http_collab_session_metrics_end(
    ngx_http_collab_session_t *s);
static void ngx_http_collab_session_cut(ngx_http_collab_session_t *s);
static void ngx_http_collab_session_free_out(ngx_http_collab_session_t *s);
static void ngx_http_collab_session_free_buffers(
    ngx_http_collab_session_t *s);


ngx_http_collab_session_t *
ngx_http_collab_session_create(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_uint_t transport, ngx_int_t *status)
{
    json_t                     *claims;
    ngx_int_t                   rc;
    ngx_str_t                   user;
    ngx_http_collab_session_t  *s;

    *status = NGX_HTTP_INTERNAL_SERVER_ERROR;

    if (ngx_http_collab_session_identity(r, lcf, transport, &claims, &user,
                                         status)
        != NGX_OK)
    {
        return NULL;
    }

    s = ngx_http_collab_session_alloc(r, lcf, transport, status);
    if (s == NULL) {
        if (claims) {
            json_decref(claims);
        }

        return NULL;
    }

    if (ngx_http_collab_session_identify(s, transport, &user, claims)
        != NGX_OK)
    {
        return NULL;
    }

    if (s->authenticated
        && transport != NGX_HTTP_COLLAB_TRANSPORT_POST
        && transport != NGX_HTTP_COLLAB_TRANSPORT_ADMIN
        && transport != NGX_HTTP_COLLAB_TRANSPORT_GET)
    {
        /* only long-lived sessions count against the per-user limit */

        rc = ngx_http_collab_limit_acquire(s, NULL, &s->limit_slot);

        if (rc == NGX_DECLINED) {
            *status = 429;
            return NULL;
        }

        s->counted = (rc == NGX_OK);
    }

    ngx_queue_insert_tail(&ngx_http_collab_worker->sessions, &s->link);

    ngx_http_set_ctx(r, s, ngx_http_collab_module);

    s->metric_conn = transport;
    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_CONN + transport - 1, 1);

    if (s->authenticated
        && (transport == NGX_HTTP_COLLAB_TRANSPORT_WS
            || transport == NGX_HTTP_COLLAB_TRANSPORT_SSE))
    {
        s->metric_session = 1;
        ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_SESSIONS, 1);
    }

    if (transport != NGX_HTTP_COLLAB_TRANSPORT_POST
        && transport != NGX_HTTP_COLLAB_TRANSPORT_GET)
    {
        /* the outbound queue's writer while the session has its request */
        r->write_event_handler = ngx_http_collab_session_write_handler;
    }

    return s;
}


/*
 * The identity that came with the request: claims of a token, or the
 * collab_user variable; claims are only ever set for collab_auth jwt.
 */

static ngx_int_t
ngx_http_collab_session_identity(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_uint_t transport, json_t **claims,
    ngx_str_t *user, ngx_int_t *status)
{
    ngx_int_t  rc;

    if (transport == NGX_HTTP_COLLAB_TRANSPORT_ADMIN) {
        rc = NGX_OK;
        *claims = NULL;

    } else {
        rc = ngx_http_collab_auth_request(r, lcf, claims);
    }

    /* an event stream or a read has no channel to send a token in later */

    if (rc == NGX_HTTP_UNAUTHORIZED
        || (rc == NGX_DECLINED
            && (transport == NGX_HTTP_COLLAB_TRANSPORT_SSE
                || transport == NGX_HTTP_COLLAB_TRANSPORT_GET)))
    {
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_AUTH_FAILURES
                                   + (rc == NGX_DECLINED
                                      ? NGX_HTTP_COLLAB_AUTHF_MISSING
                                      : NGX_HTTP_COLLAB_AUTHF_INVALID));
        *status = NGX_HTTP_UNAUTHORIZED;
        return NGX_ERROR;
    }

    ngx_str_null(user);

    if (lcf->auth != NGX_HTTP_COLLAB_AUTH_JWT && lcf->user
        && transport != NGX_HTTP_COLLAB_TRANSPORT_ADMIN)
    {
        if (ngx_http_complex_value(r, lcf->user, user) != NGX_OK) {
            return NGX_ERROR;
        }

        if (user->len > 256 || !ngx_http_collab_utf8_valid(user->data,
                                                           user->len))
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "collab: the identity is not valid UTF-8 or too "
                          "long");
            *status = NGX_HTTP_BAD_REQUEST;
            return NGX_ERROR;
        }
    }

    if (user->len == 0 && lcf->auth == NGX_HTTP_COLLAB_AUTH_VARIABLE
        && transport != NGX_HTTP_COLLAB_TRANSPORT_ADMIN)
    {
        /* an identity was required and none came with the request */
        ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_AUTH_FAILURES
                                   + NGX_HTTP_COLLAB_AUTHF_MISSING);
        *status = NGX_HTTP_UNAUTHORIZED;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Not from the request pool: a WebSocket session outlives its request
 * (see ngx_http_collab_ws_detach()).  Once the request cleanup is added,
 * it owns whatever the session takes, on the failure paths too.
 */

static ngx_http_collab_session_t *
ngx_http_collab_session_alloc(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf, ngx_uint_t transport, ngx_int_t *status)
{
    u_char                      raw[sizeof(((ngx_http_collab_session_t *)
                                            NULL)->id) / 2];
    ngx_http_cleanup_t         *cln;
    ngx_http_collab_session_t  *s;

    s = ngx_calloc(sizeof(ngx_http_collab_session_t), r->connection->log);
    if (s == NULL) {
        return NULL;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_free(s);
        return NULL;
    }

    s->cln = cln;

    s->request = r;
    s->connection = r->connection;
    s->conf = lcf;
    s->transport = transport;
    s->cursor_since = -1;

    ngx_queue_init(&s->link);
    ngx_queue_init(&s->subs);
    ngx_queue_init(&s->cmds);
    s->out_last = &s->out;

    ngx_http_collab_session_init_events(s, r->connection->log);

    s->last_recv = ngx_current_msec;
    s->log_start = ngx_current_msec;

    cln->handler = ngx_http_collab_session_cleanup;
    cln->data = s;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        return NULL;
    }

    ngx_hex_dump(s->id, raw, sizeof(raw));

    if (ngx_http_collab_proto_client(s, r) != NGX_OK) {
        *status = NGX_HTTP_BAD_REQUEST;
        return NULL;
    }

    return s;
}


static void
ngx_http_collab_session_init_events(ngx_http_collab_session_t *s,
    ngx_log_t *log)
{
    s->ping.handler = ngx_http_collab_session_ping_handler;
    s->ping.data = s;
    s->ping.log = log;
    s->ping.cancelable = 1;

    s->linger.handler = ngx_http_collab_session_linger_handler;
    s->linger.data = s;
    s->linger.log = log;

    s->drain.handler = ngx_http_collab_session_drain_handler;
    s->drain.data = s;
    s->drain.log = log;
    s->drain.cancelable = 1;

    s->expire.data = s;
    s->expire.log = log;
    s->expire.cancelable = 1;
}


/* the session's user; the claims are the session's now, even on failure */

static ngx_int_t
ngx_http_collab_session_identify(ngx_http_collab_session_t *s,
    ngx_uint_t transport, ngx_str_t *user, json_t *claims)
{
    if (transport == NGX_HTTP_COLLAB_TRANSPORT_ADMIN) {
        ngx_str_set(&s->user, "admin");
        s->authenticated = 1;
        s->transport = NGX_HTTP_COLLAB_TRANSPORT_POST;

    } else if (s->conf->auth != NGX_HTTP_COLLAB_AUTH_JWT) {
        if (user->len == 0) {
            ngx_str_set(&s->user, "anonymous");

        } else {
            s->strings = ngx_alloc(user->len, s->connection->log);
            if (s->strings == NULL) {
                return NGX_ERROR;
            }

            s->user.data = ngx_cpymem(s->strings, user->data, user->len)
                           - user->len;
            s->user.len = user->len;
        }

        s->authenticated = 1;

    } else if (claims) {
        if (ngx_http_collab_auth_apply(s, claims) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        /* the first message must be "auth" */
        ngx_str_null(&s->user);
    }

    return NGX_OK;
}


/*
 * The order matters: the session leaves the worker's list and gives back
 * its timers and posted events before anything it points to is freed, and
 * Redis commands still in flight are cut, not freed: their replies free
 * them.
 */

void
ngx_http_collab_session_cleanup(void *data)
{
    ngx_http_collab_session_t *s = data;

    ngx_http_request_t  *r;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "collab: session %*s cleanup", (size_t) 16, s->id);

    r = s->request;

    if (r) {
        /* the access log line is written after this, from the request */
        ngx_http_collab_log_end(s, r);

        ngx_http_set_ctx(r, NULL, ngx_http_collab_module);
        r->read_event_handler = ngx_http_block_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
    }

    ngx_queue_remove(&s->link);

    ngx_http_collab_session_metrics_end(s);

    ngx_http_collab_session_del_timers(s);

    if (s->counted) {
        ngx_http_collab_limit_release(s->limit_slot);
        s->counted = 0;
    }

    if (s->claims) {
        json_decref(s->claims);
        s->claims = NULL;
    }

    if (s->ping.posted) {
        ngx_delete_posted_event(&s->ping);
    }

    ngx_http_collab_session_cut(s);
    ngx_http_collab_session_free_out(s);
    ngx_http_collab_session_free_buffers(s);
    ngx_http_collab_yjs_free(s);

    ngx_free(s);
}


/*
 * A session leaves the gauges; a WebSocket or event stream counts once in
 * collab_disconnects_total, by the code of its end (s->close_code), or
 * 1006 when the peer went away without a close.
 */

static void
ngx_http_collab_session_metrics_end(ngx_http_collab_session_t *s)
{
    ngx_uint_t  code, transport;

    if (!s->metric_conn) {
        return;
    }

    transport = s->metric_conn;
    s->metric_conn = 0;

    ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_CONN + transport - 1, -1);

    if (s->metric_session) {
        s->metric_session = 0;
        ngx_http_collab_metrics_gauge(NGX_HTTP_COLLAB_G_SESSIONS, -1);
    }

    if (transport != NGX_HTTP_COLLAB_TRANSPORT_WS
        && transport != NGX_HTTP_COLLAB_TRANSPORT_SSE)
    {
        return;
    }

    /* the same code as $collab_close_code */
    code = s->close_code ? s->close_code : 1006;

    ngx_http_collab_metrics_disconnect(code);
}


/* the timer tree must not point into a freed session */

static void
ngx_http_collab_session_del_timers(ngx_http_collab_session_t *s)
{
    if (s->detach.posted) {
        ngx_delete_posted_event(&s->detach);
    }

    if (s->ping.timer_set) {
        ngx_del_timer(&s->ping);
    }

    if (s->linger.timer_set) {
        ngx_del_timer(&s->linger);
    }

    if (s->expire.timer_set) {
        ngx_del_timer(&s->expire);
    }

    if (s->drain.timer_set) {
        ngx_del_timer(&s->drain);
    }

    if (s->presence.timer_set) {
        ngx_del_timer(&s->presence);
    }
}


/* memberships go, Redis commands in flight are cut from the session */

static void
ngx_http_collab_session_cut(ngx_http_collab_session_t *s)
{
    ngx_queue_t            *q;
    ngx_http_collab_cmd_t  *cmd;

    while (!ngx_queue_empty(&s->subs)) {
        q = ngx_queue_head(&s->subs);
        ngx_http_collab_doc_sub_free(
            ngx_queue_data(q, ngx_http_collab_sub_t, session_link));
    }

    /* replies still on their way find no session and only free the command */

    while (!ngx_queue_empty(&s->cmds)) {
        q = ngx_queue_head(&s->cmds);
        ngx_queue_remove(q);

        cmd = ngx_queue_data(q, ngx_http_collab_cmd_t, session_link);
        cmd->session = NULL;
        cmd->sub = NULL;
    }
}


static void
ngx_http_collab_session_free_out(ngx_http_collab_session_t *s)
{
    ngx_http_collab_out_t  *out, *next;

    for (out = s->out; out; out = next) {
        next = out->next;
        ngx_http_collab_msg_release(out->msg);
        ngx_http_collab_out_put(out);
    }

    s->out = NULL;
    s->out_last = &s->out;
    s->out_bytes = 0;
    s->pong = NULL;
}


static void
ngx_http_collab_session_free_buffers(ngx_http_collab_session_t *s)
{
    ngx_uint_t  i;

    if (s->parser) {
        ngx_free(s->parser);
        s->parser = NULL;
    }

    if (s->msg) {
        ngx_free(s->msg);
        s->msg = NULL;
    }

    if (s->rest) {
        ngx_free(s->rest);
        s->rest = NULL;
    }

    if (s->replies) {
        for (i = 0; i < s->nreplies; i++) {
            ngx_http_collab_msg_release(s->replies[i]);
        }

        s->replies = NULL;
    }

    if (s->strings) {
        ngx_free(s->strings);
    }

    if (s->pending_buf) {
        ngx_free(s->pending_buf);
    }

    if (s->groups.data) {
        ngx_free(s->groups.data);
    }

    if (s->log_docs) {
        ngx_free(s->log_docs);
    }
}


static ngx_http_collab_out_t *
ngx_http_collab_out_get(ngx_log_t *log)
{
    ngx_http_collab_out_t     *out;
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w->free_out) {
        out = w->free_out;
        w->free_out = out->next;
        w->nfree_out--;

    } else {
        out = ngx_alloc(sizeof(ngx_http_collab_out_t), log);
        if (out == NULL) {
            return NULL;
        }
    }

    ngx_memzero(&out->buf, sizeof(ngx_buf_t));

    out->next = NULL;
    out->msg = NULL;
    out->cl.buf = &out->buf;
    out->cl.next = NULL;

    return out;
}


static void
ngx_http_collab_out_put(ngx_http_collab_out_t *out)
{
    ngx_http_collab_worker_t  *w;

    w = ngx_http_collab_worker;

    if (w == NULL || w->nfree_out >= NGX_HTTP_COLLAB_FREE_OUT_MAX) {
        ngx_free(out);
        return;
    }

    out->next = w->free_out;
    w->free_out = out;
    w->nfree_out++;
}


static void
ngx_http_collab_session_append(ngx_http_collab_session_t *s,
    ngx_http_collab_out_t *out, size_t len)
{
    ngx_http_collab_out_t  *last;

    if (s->out) {
        last = (ngx_http_collab_out_t *)
                   ((u_char *) s->out_last
                    - offsetof(ngx_http_collab_out_t, next));
        last->cl.next = &out->cl;

    } else {
        /* the queue waits from now on */
        s->out_moved = ngx_current_msec;
    }

    *s->out_last = out;
    s->out_last = &out->next;
    s->out_bytes += len;

    if (s->out_bytes > s->conf->send_queue && !s->drain.timer_set) {
        /* behind: it must drain within collab_send_timeout */
        ngx_add_timer(&s->drain, s->conf->send_timeout);
    }

    ngx_http_collab_session_post_write(s);
}


/*
 * Queues a shared message.  Deltas are checked against collab_send_queue by
 * the fan-out, which switches a slow reader to the log; anything else may
 * go up to twice the limit before the session is closed as a consumer that
 * does not read at all.
 */

ngx_int_t
ngx_http_collab_session_send(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    if (s->closing || s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST
        || s->transport == NGX_HTTP_COLLAB_TRANSPORT_GET)
    {
        return NGX_DECLINED;
    }

    if (s->yjs) {
        /* translated: it queues what the client understands */
        return ngx_http_collab_yjs_send(s, m);
    }

    return ngx_http_collab_session_queue(s, m);
}


/* a message as it is, framed for the session's transport */

ngx_int_t
ngx_http_collab_session_queue(ngx_http_collab_session_t *s,
    ngx_http_collab_msg_t *m)
{
    u_char                 *p;
    size_t                  len;
    ngx_http_collab_out_t  *out;

    if (s->closing) {
        return NGX_DECLINED;
    }

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
        p = ngx_http_collab_ws_frame(m, &len);

    } else {
        p = ngx_http_collab_sse_event(m, &len);
    }

    if (p == NULL) {
        return NGX_ERROR;
    }

    if (s->out_bytes + len > 2 * s->conf->send_queue) {
        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "collab: session %*s does not read, closing it",
                      (size_t) 16, s->id);

        ngx_http_collab_session_close(s, 1008, "send queue overflow");
        return NGX_DECLINED;
    }

    out = ngx_http_collab_out_get(s->connection->log);
    if (out == NULL) {
        return NGX_ERROR;
    }

    out->msg = m;
    m->refs++;

    ngx_http_collab_metrics_out(m, len);

    out->buf.pos = p;
    out->buf.last = p + len;
    out->buf.start = p;
    out->buf.end = p + len;
    out->buf.memory = 1;
    out->buf.flush = 1;

    ngx_http_collab_session_append(s, out, len);

    return NGX_OK;
}


/*
 * WebSocket control frames, and the SSE heartbeat when opcode is 0.  They
 * count against the queue like messages.  Only the latest ping needs a
 * pong (RFC 6455 5.5.3): a pong still waiting in the queue is rewritten
 * instead of queueing another, so a ping flood holds one pong.
 */

ngx_int_t
ngx_http_collab_session_send_ctl(ngx_http_collab_session_t *s,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    u_char                 *p;
    ngx_http_collab_out_t  *out;

    if (s->close_sent || len > 125) {
        return NGX_DECLINED;
    }

    out = s->pong;

    if (opcode == NGX_HTTP_COLLAB_WS_OP_PONG
        && out && out->buf.pos == out->buf.start)
    {
        s->out_bytes -= out->buf.end - out->buf.start;

        p = ngx_cpymem(out->ctl + 2, data, len);
        out->ctl[1] = (u_char) len;

        out->buf.last = p;
        out->buf.end = p;
        s->out_bytes += p - out->ctl;

        return NGX_OK;
    }

    out = ngx_http_collab_out_get(s->connection->log);
    if (out == NULL) {
        return NGX_ERROR;
    }

    if (opcode == NGX_HTTP_COLLAB_WS_OP_PONG) {
        s->pong = out;
    }

    p = out->ctl;

    if (opcode) {
        *p++ = (u_char) (0x80 | opcode);
        *p++ = (u_char) len;
    }

    p = ngx_cpymem(p, data, len);

    out->buf.pos = out->ctl;
    out->buf.last = p;
    out->buf.start = out->ctl;
    out->buf.end = p;
    out->buf.memory = 1;
    out->buf.flush = 1;

    if (opcode == NGX_HTTP_COLLAB_WS_OP_CLOSE) {
        s->close_sent = 1;
    }

    ngx_http_collab_session_append(s, out, p - out->ctl);

    return NGX_OK;
}


void
ngx_http_collab_session_post_write(ngx_http_collab_session_t *s)
{
    ngx_post_event(s->connection->write, &ngx_posted_events);
}


static void
ngx_http_collab_session_write_handler(ngx_http_request_t *r)
{
    ngx_http_collab_session_t  *s;

    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);
    if (s == NULL) {
        return;
    }

    if (r->connection->write->timedout) {
        r->connection->write->timedout = 0;
    }

    ngx_http_collab_session_flush(s);
}


void
ngx_http_collab_session_flush(ngx_http_collab_session_t *s)
{
    off_t      sent;
    size_t     before;
    ngx_int_t  rc;

    before = s->out_bytes;
    sent = s->connection->sent;

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
        rc = ngx_http_collab_ws_flush(s);

    } else {
        rc = ngx_http_collab_sse_flush(s);
    }

    if (rc == NGX_ERROR) {
        s->connection->error = 1;
        ngx_http_collab_session_finalize(s);
        return;
    }

    if (s->connection->sent != sent) {
        s->out_moved = ngx_current_msec;
    }

    if (rc == NGX_OK && s->out == NULL && s->finalize) {
        /* the close frame or the end of the stream went out */

        if (s->transport != NGX_HTTP_COLLAB_TRANSPORT_WS
            || s->close_received || s->shutdown)
        {
            ngx_http_collab_session_finalize(s);
            return;
        }

        if (!s->linger.timer_set) {
            ngx_add_timer(&s->linger, NGX_HTTP_COLLAB_LINGER);
        }

        return;
    }

    if (s->drain.timer_set && s->out_bytes <= s->conf->send_queue / 2) {
        /* it reads: no longer a candidate for the slow consumer timeout */
        ngx_del_timer(&s->drain);
    }

    if (s->out_bytes < before && s->out_bytes <= s->conf->send_queue / 2) {
        /* readers that stopped for room go on */
        ngx_http_collab_doc_resume(s);

        if (s->read_full) {
            /* and so does reading from the peer */
            s->read_full = 0;
            ngx_post_event(s->connection->read, &ngx_posted_events);
        }
    }
}


static void
ngx_http_collab_session_drain_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    s = ev->data;
    c = s->connection;

    ngx_log_error(NGX_LOG_WARN, c->log, 0,
                  "collab: session %*s did not drain its send queue in "
                  "time, closing it", (size_t) 16, s->id);

    /* a close frame would wait behind what does not drain */
    c->error = 1;
    ngx_http_collab_session_end(s);
}


/* releases what went out completely */

void
ngx_http_collab_session_sent(ngx_http_collab_session_t *s)
{
    ngx_http_collab_out_t  *out;

    while (s->out) {
        out = s->out;

        if (out->buf.pos != out->buf.last) {
            break;
        }

        s->out = out->next;
        s->out_bytes -= out->buf.end - out->buf.start;

        if (s->out_passed == out) {
            s->out_passed = NULL;
        }

        if (s->pong == out) {
            s->pong = NULL;
        }

        s->log_bytes_out += out->buf.end - out->buf.start;
        s->log_msgs_out += (out->msg != NULL);

        ngx_http_collab_msg_release(out->msg);
        ngx_http_collab_out_put(out);
    }

    if (s->out == NULL) {
        s->out_last = &s->out;
        s->out_passed = NULL;
    }
}


/*
 * Closes a session from anywhere: queues the close frame (or ends the event
 * stream) and lets the connection's write event finish the job, so nothing
 * upstream in the call stack finds its session freed.
 */

void
ngx_http_collab_session_close(ngx_http_collab_session_t *s, ngx_uint_t code,
    const char *reason)
{
    if (s->closing) {
        return;
    }

    if (s->yjs) {
        code = ngx_http_collab_yjs_close_code(code);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "collab: closing session, %ui %s", code, reason);

    s->closing = 1;
    s->finalize = 1;
    s->closed_at = ngx_current_msec;

    if (s->close_code == 0) {
        /* an event stream ended for an error has no code of its own */
        s->close_code = code ? code : 1011;
    }

    if (s->ping.timer_set) {
        ngx_del_timer(&s->ping);
    }

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
        ngx_http_collab_ws_fail(s, code, reason);
    }

    /* bounded, and keeps a quitting worker alive until the close went out */
    ngx_add_timer(&s->linger, NGX_HTTP_COLLAB_LINGER);

    ngx_http_collab_session_post_write(s);
}


void
ngx_http_collab_session_finalize(ngx_http_collab_session_t *s)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = s->request;

    if (r) {
        /* the cleanup handler runs from here */
        ngx_http_finalize_request(r, NGX_DONE);
        return;
    }

    /* a detached WebSocket: the connection is ours alone */

    c = s->connection;
    ngx_http_collab_session_cleanup(s);
    ngx_http_close_connection(c);
}


/* finalizes from outside the connection's own request handler */

void
ngx_http_collab_session_end(ngx_http_collab_session_t *s)
{
    ngx_uint_t         bound;
    ngx_connection_t  *c;

    c = s->connection;
    bound = (s->request != NULL);

    ngx_http_collab_session_finalize(s);

    if (bound) {
        ngx_http_run_posted_requests(c);
    }
}


static void
ngx_http_collab_session_linger_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    s = ev->data;
    c = s->connection;

    if ((s->out != NULL || c->buffered)
        && ngx_current_msec - s->out_moved < NGX_HTTP_COLLAB_LINGER
        && ngx_current_msec - s->closed_at < NGX_HTTP_COLLAB_LINGER_MAX)
    {
        /* a slow reader still reads: let it have its last deltas and close */
        ngx_add_timer(&s->linger, NGX_HTTP_COLLAB_LINGER
                                  - (ngx_current_msec - s->out_moved));
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "collab: close timed out");

    c->error = 1;
    ngx_http_collab_session_end(s);
}


static void
ngx_http_collab_session_ping_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    s = ev->data;
    c = s->connection;

    if (s->closing) {
        return;
    }

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
        if (ngx_current_msec - s->last_recv >= 2 * s->conf->ping) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "collab: peer did not answer pings, dropping it");

            c->error = 1;
            ngx_http_collab_session_end(s);
            return;
        }

        if (s->out
            && ngx_current_msec - s->out_moved >= 2 * s->conf->ping)
        {
            /* it writes (pings, say) but takes nothing of what waits */

            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "collab: peer does not read, dropping it");

            c->error = 1;
            ngx_http_collab_session_end(s);
            return;
        }
    }

    /* a queue that waits carries the heartbeat's purpose already */

    if (s->out == NULL) {
        if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS) {
            (void) ngx_http_collab_ws_ping(s);

        } else {
            (void) ngx_http_collab_sse_heartbeat(s);
        }
    }

    ngx_add_timer(&s->ping, s->conf->ping);
}


void
ngx_http_collab_session_start_timers(ngx_http_collab_session_t *s)
{
    ngx_add_timer(&s->ping, s->conf->ping);
}


/* the identity is known: what waited for it goes on */

void
ngx_http_collab_session_authenticated(ngx_http_collab_session_t *s)
{
    ngx_str_t  epoch;

    if (s->pending_doc.len) {
        epoch = s->cursor_epoch;

        (void) ngx_http_collab_doc_subscribe(s, &s->pending_doc,
                                             s->cursor_since, &epoch);
        ngx_str_null(&s->pending_doc);
    }
}


void
ngx_http_collab_session_welcome(ngx_http_collab_session_t *s)
{
    ngx_str_t               sid;
    ngx_http_collab_msg_t  *m;

    sid.data = s->id;
    sid.len = sizeof(s->id);

    m = ngx_http_collab_msg_build("welcome", "session", 'S', &sid,
                                  "user", 'S', &s->user,
                                  "heartbeat", 'I',
                                  (int64_t) ((s->conf->ping + 999) / 1000),
                                  NULL);
    if (m == NULL) {
        return;
    }

    (void) ngx_http_collab_session_send(s, m);
    ngx_http_collab_msg_release(m);
}


/* reload or quit: every client is told to reconnect to the new workers */

void
ngx_http_collab_session_shutdown_all(void)
{
    ngx_uint_t                  bound;
    ngx_queue_t                *q, *next;
    ngx_connection_t           *c;
    ngx_http_collab_session_t  *s;

    for (q = ngx_queue_head(&ngx_http_collab_worker->sessions);
         q != ngx_queue_sentinel(&ngx_http_collab_worker->sessions);
         q = next)
    {
        next = ngx_queue_next(q);
        s = ngx_queue_data(q, ngx_http_collab_session_t, link);

        if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST
            || s->transport == NGX_HTTP_COLLAB_TRANSPORT_GET)
        {
            continue;
        }

        s->shutdown = 1;
        ngx_http_collab_session_close(s, 1001, "server shutting down");

        /*
         * Posted events would wait for the next epoll wakeup, up to the
         * linger timer: write the close frame now.
         */

        c = s->connection;
        bound = (s->request != NULL);

        ngx_http_collab_session_flush(s);

        if (bound) {
            ngx_http_run_posted_requests(c);
        }
    }
}
