
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * Server-Sent Events: the server messages of one document as events, sent
 * through the output filter chain (chunked over HTTP/1.1, framed by HTTP/2).
 * The event id is the resume cursor "EPOCH:SEQ" that browsers send back as
 * Last-Event-ID when they reconnect.
 */


static ngx_int_t ngx_http_collab_sse_cursor(ngx_http_request_t *r,
    ngx_http_collab_session_t *s);
static ngx_int_t ngx_http_collab_sse_header(ngx_http_request_t *r,
    const char *key, const char *value);


ngx_int_t
ngx_http_collab_sse_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_int_t                   rc;
    ngx_str_t                   doc;
    ngx_http_collab_session_t  *s;

    ngx_str_null(&doc);

    if (lcf->doc) {
        if (ngx_http_complex_value(r, lcf->doc, &doc) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (!ngx_http_collab_doc_id_valid(doc.data, doc.len)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: an event stream needs a valid document id");
        return NGX_HTTP_BAD_REQUEST;
    }

    if (ngx_http_collab_redis_for_doc(&doc, 0)->state
        == NGX_HTTP_COLLAB_REDIS_DOWN
        || ngx_http_collab_redis_for_doc(&doc, 1)->state
           == NGX_HTTP_COLLAB_REDIS_DOWN)
    {
        /* EventSource retries by itself */
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    s = ngx_http_collab_session_create(r, lcf,
                                       NGX_HTTP_COLLAB_TRANSPORT_SSE, &rc);
    if (s == NULL) {
        return rc;
    }

    ngx_http_collab_log_doc(s, &doc);

    if (ngx_http_collab_sse_cursor(r, s) != NGX_OK) {
        return NGX_HTTP_BAD_REQUEST;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->keepalive = 0;

#if (NGX_HTTP_GZIP)
    r->gzip_tested = 1;
    r->gzip_ok = 0;
#endif

    if (ngx_http_collab_sse_header(r, "Cache-Control", "no-cache") != NGX_OK
        || ngx_http_collab_sse_header(r, "X-Accel-Buffering", "no")
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    r->main->count++;

    /* events are small and must not wait for Nagle and delayed ACKs */
    (void) ngx_tcp_nodelay(r->connection);

    /* notices the client going away */
    r->read_event_handler = ngx_http_test_reading;

    ngx_http_collab_session_welcome(s);
    ngx_http_collab_session_start_timers(s);

    if (ngx_http_collab_doc_subscribe(s, &doc, s->cursor_since,
                                      &s->cursor_epoch)
        != NGX_OK)
    {
        ngx_http_collab_session_close(s, 0, "subscribe failed");
    }

    ngx_http_collab_session_post_write(s);

    return NGX_DONE;
}


/* Last-Event-ID "EPOCH:SEQ" (or "SEQ"), else ?since=SEQ&epoch=EPOCH */

static ngx_int_t
ngx_http_collab_sse_cursor(ngx_http_request_t *r,
    ngx_http_collab_session_t *s)
{
    ngx_str_t                 id, since, epoch;
    ngx_table_elt_t          *h;
    ngx_http_collab_cursor_t  cursor;

    ngx_str_null(&id);
    ngx_str_null(&since);
    ngx_str_null(&epoch);

    h = ngx_http_collab_header(r, "Last-Event-ID", 13);

    if (h) {
        id = h->value;
    }

    if (ngx_http_arg(r, (u_char *) "since", 5, &since) == NGX_OK
        && since.data == NULL)
    {
        since.data = (u_char *) "";
    }

    if (ngx_http_arg(r, (u_char *) "epoch", 5, &epoch) == NGX_OK
        && epoch.data == NULL)
    {
        epoch.data = (u_char *) "";
    }

    if (ngx_http_collab_cursor_parse(id.data, id.len, since.data, since.len,
                                     epoch.data, epoch.len, &cursor)
        != 0)
    {
        return NGX_ERROR;
    }

    s->cursor_since = cursor.since;
    s->cursor_epoch.data = (u_char *) cursor.epoch;
    s->cursor_epoch.len = cursor.epoch_len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_sse_header(ngx_http_request_t *r, const char *key,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}


/* encodes a message once as an event for all SSE sessions it goes to */

u_char *
ngx_http_collab_sse_event(ngx_http_collab_msg_t *m, size_t *len)
{
    u_char     *p;
    size_t      n;
    ngx_str_t   type;

    static ngx_str_t  error = ngx_string("collab-error");

    if (m->sse == NULL) {
        type = m->type;

        if (type.len == 5 && ngx_strncmp(type.data, "error", 5) == 0) {
            /* "error" is EventSource's own event for a failed connection */
            type = error;
        }

        n = sizeof("event: \nid: :\ndata: \n\n") + type.len
            + m->epoch.len + NGX_INT64_LEN + m->len;

        m->sse = ngx_alloc(n, ngx_cycle->log);
        if (m->sse == NULL) {
            return NULL;
        }

        p = ngx_sprintf(m->sse, "event: %V\n", &type);

        if (m->epoch.len) {
            p = ngx_sprintf(p, "id: %V:%uL\n", &m->epoch, m->seq);
        }

        p = ngx_cpymem(p, "data: ", 6);
        p = ngx_cpymem(p, m->json, m->len);
        *p++ = '\n';
        *p++ = '\n';

        m->sse_len = p - m->sse;
    }

    *len = m->sse_len;

    return m->sse;
}


ngx_int_t
ngx_http_collab_sse_heartbeat(ngx_http_collab_session_t *s)
{
    return ngx_http_collab_session_send_ctl(s, 0, (u_char *) ": ping\n\n",
                                            8);
}


ngx_int_t
ngx_http_collab_sse_flush(ngx_http_collab_session_t *s)
{
    ngx_int_t            rc;
    ngx_chain_t         *in;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = s->request;
    c = r->connection;

    /* what the filters have not seen yet starts after out_passed */

    if (s->out_passed) {
        in = s->out_passed->cl.next;

    } else {
        in = s->out ? &s->out->cl : NULL;
    }

    if (in) {
        s->out_passed = (ngx_http_collab_out_t *)
                            ((u_char *) s->out_last
                             - offsetof(ngx_http_collab_out_t, next));
    }

    if (in || r->out || c->buffered) {
        rc = ngx_http_output_filter(r, in);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        ngx_http_collab_session_sent(s);
    }

    if (s->out || r->out || c->buffered) {
        return ngx_handle_write_event(c->write, 0) == NGX_OK
               ? NGX_AGAIN : NGX_ERROR;
    }

    if (s->finalize && !s->last_sent) {
        s->last_sent = 1;

        rc = ngx_http_send_special(r, NGX_HTTP_LAST|NGX_HTTP_FLUSH);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (r->out || c->buffered) {
            return ngx_handle_write_event(c->write, 0) == NGX_OK
                   ? NGX_AGAIN : NGX_ERROR;
        }
    }

    return NGX_OK;
}
