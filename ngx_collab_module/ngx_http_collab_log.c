
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * The $collab_* variables of the access log.  The access log line is
 * written by ngx_http_free_request() after the request's cleanups ran, so
 * after the session was freed: the session's cleanup leaves what the line
 * needs in the request pool (a log record), and the variables read that.
 * A WebSocket whose location logs keeps its request for the same reason
 * (ngx_http_collab_log_wanted(), see docs/architecture.md).
 */


/* the documents in a line: longer lists end with ",+N", N not listed */
#define NGX_HTTP_COLLAB_LOG_DOCS  256


typedef struct {
    u_char                       id[16];
    ngx_str_t                    user;
    ngx_str_t                    docs;
    ngx_uint_t                   close_code;     /* 0: none (HTTP) */
    ngx_uint_t                   msgs_in;
    ngx_uint_t                   msgs_out;
    off_t                        bytes_out;
    ngx_msec_t                   duration;
} ngx_http_collab_log_rec_t;


enum {
    NGX_HTTP_COLLAB_VAR_SESSION = 0,
    NGX_HTTP_COLLAB_VAR_USER,
    NGX_HTTP_COLLAB_VAR_DOCS,
    NGX_HTTP_COLLAB_VAR_CLOSE_CODE,
    NGX_HTTP_COLLAB_VAR_MSGS_IN,
    NGX_HTTP_COLLAB_VAR_MSGS_OUT,
    NGX_HTTP_COLLAB_VAR_BYTES_OUT,
    NGX_HTTP_COLLAB_VAR_DURATION
};


static void ngx_http_collab_log_mark(void *data);
static ngx_http_collab_log_rec_t *ngx_http_collab_log_rec(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_log_docs(ngx_http_collab_session_t *s,
    ngx_pool_t *pool, ngx_str_t *out);
static ngx_int_t ngx_http_collab_log_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


/* ngx_http_log_module's location configuration starts with its logs */
typedef struct {
    ngx_array_t                 *logs;           /* NULL: access_log off */
} ngx_http_collab_log_loc_conf_t;


extern ngx_module_t  ngx_http_log_module;


static ngx_http_variable_t  ngx_http_collab_log_vars[] = {

    { ngx_string("collab_session"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_SESSION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_user"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_USER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_docs"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_DOCS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_close_code"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_CLOSE_CODE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_msgs_in"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_MSGS_IN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_msgs_out"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_MSGS_OUT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_bytes_out"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_BYTES_OUT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("collab_duration"), NULL, ngx_http_collab_log_variable,
      NGX_HTTP_COLLAB_VAR_DURATION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_collab_log_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_collab_log_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* whether the request's location writes an access log line */

ngx_int_t
ngx_http_collab_log_wanted(ngx_http_request_t *r)
{
    ngx_http_collab_log_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_log_module);

    return llcf->logs != NULL && llcf->logs->nelts > 0;
}


/* a document the session named, once, within the bound of the list */

void
ngx_http_collab_log_doc(ngx_http_collab_session_t *s, ngx_str_t *doc)
{
    u_char  *p, *last, *start, *buf;
    size_t   len;

    p = s->log_docs;
    last = p + s->log_docs_len;

    while (p < last) {
        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        if ((size_t) (p - start) == doc->len
            && ngx_strncmp(start, doc->data, doc->len) == 0)
        {
            return;
        }

        p++;
    }

    len = s->log_docs_len + (s->log_docs_len ? 1 : 0) + doc->len;

    if (len > NGX_HTTP_COLLAB_LOG_DOCS) {
        s->log_docs_more++;
        return;
    }

    /* sessions name one or two documents: grown to fit, never to spare */

    buf = ngx_alloc(len, s->connection->log);
    if (buf == NULL) {
        s->log_docs_more++;
        return;
    }

    p = buf;

    if (s->log_docs_len) {
        p = ngx_cpymem(p, s->log_docs, s->log_docs_len);
        *p++ = ',';
    }

    ngx_memcpy(p, doc->data, doc->len);

    if (s->log_docs) {
        ngx_free(s->log_docs);
    }

    s->log_docs = buf;
    s->log_docs_len = len;
}


/*
 * The session ends while its request lives: what the access log line needs
 * goes to the request pool, where the variables find it after the session
 * was freed.  Called from the session's cleanup, at most once.
 */

void
ngx_http_collab_log_end(ngx_http_collab_session_t *s, ngx_http_request_t *r)
{
    ngx_pool_cleanup_t         *cln;
    ngx_http_collab_log_rec_t  *rec;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_collab_log_rec_t));
    if (cln == NULL) {
        return;
    }

    cln->handler = ngx_http_collab_log_mark;
    rec = cln->data;

    ngx_memcpy(rec->id, s->id, sizeof(rec->id));

    rec->user.len = s->user.len;
    rec->user.data = ngx_pstrdup(r->pool, &s->user);

    if (rec->user.data == NULL
        || ngx_http_collab_log_docs(s, r->pool, &rec->docs) != NGX_OK)
    {
        rec->user.len = 0;
        ngx_str_null(&rec->docs);
    }

    rec->close_code = 0;

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_WS
        || s->transport == NGX_HTTP_COLLAB_TRANSPORT_SSE)
    {
        /* no close frame either way: the connection just ended */
        rec->close_code = s->close_code ? s->close_code : 1006;
    }

    rec->msgs_in = s->log_msgs_in;
    rec->msgs_out = s->log_msgs_out;
    rec->bytes_out = s->log_bytes_out;
    rec->duration = ngx_current_msec - s->log_start;
}


static ngx_int_t
ngx_http_collab_log_docs(ngx_http_collab_session_t *s, ngx_pool_t *pool,
    ngx_str_t *out)
{
    u_char  *p;

    out->len = 0;
    out->data = ngx_pnalloc(pool, s->log_docs_len + sizeof(",+") - 1
                                  + NGX_INT_T_LEN);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;

    if (s->log_docs_len) {
        p = ngx_cpymem(p, s->log_docs, s->log_docs_len);
    }

    if (s->log_docs_more) {
        p = ngx_sprintf(p, "%s+%ui", s->log_docs_len ? "," : "",
                        s->log_docs_more);
    }

    out->len = p - out->data;

    return NGX_OK;
}


/* only marks the log record among the pool's cleanups */

static void
ngx_http_collab_log_mark(void *data)
{
}


static ngx_http_collab_log_rec_t *
ngx_http_collab_log_rec(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_collab_log_mark) {
            return cln->data;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_collab_log_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                     *p;
    ngx_http_collab_log_rec_t  *rec;

    rec = ngx_http_collab_log_rec(r);

    if (rec == NULL) {
        /* no session, or it did not end yet */
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_COLLAB_VAR_SESSION:
        v->data = rec->id;
        v->len = sizeof(rec->id);
        break;

    case NGX_HTTP_COLLAB_VAR_USER:
        v->data = rec->user.data;
        v->len = rec->user.len;
        break;

    case NGX_HTTP_COLLAB_VAR_DOCS:
        v->data = rec->docs.data;
        v->len = rec->docs.len;
        break;

    default:
        if (data == NGX_HTTP_COLLAB_VAR_CLOSE_CODE && rec->close_code == 0) {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN + 4);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;

        switch (data) {

        case NGX_HTTP_COLLAB_VAR_CLOSE_CODE:
            p = ngx_sprintf(p, "%ui", rec->close_code);
            break;

        case NGX_HTTP_COLLAB_VAR_MSGS_IN:
            p = ngx_sprintf(p, "%ui", rec->msgs_in);
            break;

        case NGX_HTTP_COLLAB_VAR_MSGS_OUT:
            p = ngx_sprintf(p, "%ui", rec->msgs_out);
            break;

        case NGX_HTTP_COLLAB_VAR_BYTES_OUT:
            p = ngx_sprintf(p, "%O", rec->bytes_out);
            break;

        default: /* NGX_HTTP_COLLAB_VAR_DURATION */
            p = ngx_sprintf(p, "%T.%03M", (time_t) (rec->duration / 1000),
                            rec->duration % 1000);
        }

        v->len = p - v->data;
    }

    if (v->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
