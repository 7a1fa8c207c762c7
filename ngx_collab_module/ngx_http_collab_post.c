
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/*
 * POST: clients without WebSocket send their messages as one JSON object or
 * an array and get one reply per message, in order, once every delta has
 * been stored (or refused).
 */


#define NGX_HTTP_COLLAB_POST_MAX_MESSAGES  1000


static void ngx_http_collab_post_body(ngx_http_request_t *r);
static void ngx_http_collab_post_empty(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_post_read(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_collab_post_done(ngx_http_collab_session_t *s);
static ngx_int_t ngx_http_collab_post_respond(ngx_http_request_t *r,
    ngx_uint_t status, ngx_chain_t *out, size_t len);
static void ngx_http_collab_post_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);


ngx_int_t
ngx_http_collab_post_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_int_t  rc;

    rc = ngx_http_read_client_request_body(r, ngx_http_collab_post_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_collab_post_body(ngx_http_request_t *r)
{
    size_t                       n, i;
    json_t                      *root, *msg;
    ngx_int_t                    status;
    ngx_str_t                    body;
    json_error_t                 err;
    ngx_http_collab_session_t   *s;
    ngx_http_collab_loc_conf_t  *lcf;
    u_char                       text[200];

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if (ngx_http_collab_post_read(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (body.len == 0) {
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "invalid",
                                   "the request body is empty");
        return;
    }

    root = json_loadb((char *) body.data, body.len, JSON_REJECT_DUPLICATES,
                      &err);

    if (root == NULL) {
        ngx_snprintf(text, sizeof(text) - 1, "invalid JSON at position %d: "
                     "%s%Z", err.position, err.text);
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "invalid",
                                   (char *) text);
        return;
    }

    n = json_is_array(root) ? json_array_size(root) : 1;

    if (!json_is_array(root) && body.len > lcf->max_message) {
        json_decref(root);
        ngx_http_collab_post_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "too_large", "the message is larger than "
                                   "collab_max_message");
        return;
    }

    if (n == 0 && json_is_array(root)) {
        json_decref(root);
        ngx_http_collab_post_empty(r);
        return;
    }

    if (n > NGX_HTTP_COLLAB_POST_MAX_MESSAGES) {
        json_decref(root);
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "too_large",
                                   "the body holds more than 1000 messages");
        return;
    }

    s = ngx_http_collab_session_create(r, lcf,
                                       NGX_HTTP_COLLAB_TRANSPORT_POST,
                                       &status);
    if (s == NULL) {
        json_decref(root);
        ngx_http_finalize_request(r, status);
        return;
    }

    s->replies = ngx_pcalloc(r->pool, n * sizeof(ngx_http_collab_msg_t *));
    if (s->replies == NULL) {
        json_decref(root);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    s->nreplies = n;

    /* one more than the messages: nothing is sent before the loop ends */
    s->pending = n + 1;

    for (i = 0; i < n; i++) {
        msg = json_is_array(root) ? json_array_get(root, i) : root;

        /* the limit of a WebSocket message holds for each message here */

        if (json_is_array(root)
            && json_dumpb(msg, NULL, 0, JSON_COMPACT) > lcf->max_message)
        {
            ngx_http_collab_post_reply(s, i,
                ngx_http_collab_msg_error("error", "too_large", NULL, NULL,
                                          "the message is larger than "
                                          "collab_max_message"));
            continue;
        }

        s->cur_len = 0;
        (void) ngx_http_collab_proto_handle_json(s, msg, i);
    }

    json_decref(root);

    ngx_http_collab_post_done(s);
}


/* the body in one piece, from memory or from its temporary file */

static ngx_int_t
ngx_http_collab_post_read(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len == 0) {
        return NGX_OK;
    }

    body->data = ngx_pnalloc(r->pool, len);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    body->len = p - body->data;

    return NGX_OK;
}


void
ngx_http_collab_post_reply(ngx_http_collab_session_t *s, ngx_uint_t slot,
    ngx_http_collab_msg_t *m)
{
    if (slot >= s->nreplies || s->replies[slot]) {
        /* one reply per message: the first one counts */
        ngx_http_collab_msg_release(m);
        return;
    }

    s->replies[slot] = m;

    ngx_http_collab_post_done(s);
}


static void
ngx_http_collab_post_done(ngx_http_collab_session_t *s)
{
    u_char              *p;
    size_t               len;
    ngx_buf_t           *b;
    ngx_uint_t           i;
    ngx_chain_t          out;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (--s->pending) {
        return;
    }

    r = s->request;
    c = r->connection;

    len = 2;

    for (i = 0; i < s->nreplies; i++) {
        len += (s->replies[i] ? s->replies[i]->len : 4) + 1;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    p = b->last;
    *p++ = '[';

    for (i = 0; i < s->nreplies; i++) {
        if (i) {
            *p++ = ',';
        }

        if (s->replies[i]) {
            p = ngx_cpymem(p, s->replies[i]->json, s->replies[i]->len);

        } else {
            p = ngx_cpymem(p, "null", 4);
        }
    }

    *p++ = ']';

    b->last = p;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_collab_post_respond(r, NGX_HTTP_OK,
                                                              &out,
                                                              p - b->pos));
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_collab_post_respond(ngx_http_request_t *r, ngx_uint_t status,
    ngx_chain_t *out, size_t len)
{
    ngx_int_t  rc;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, out);
}


static void
ngx_http_collab_post_empty(ngx_http_request_t *r)
{
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b->pos = (u_char *) "[]";
    b->last = b->pos + 2;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_collab_post_respond(r, NGX_HTTP_OK,
                                                              &out, 2));
}


static void
ngx_http_collab_post_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_buf_t              *b;
    ngx_chain_t             out;
    ngx_http_collab_msg_t  *m;

    m = ngx_http_collab_msg_error("error", code, NULL, NULL, "%s", message);
    if (m == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b = ngx_create_temp_buf(r->pool, m->len + 2);
    if (b == NULL) {
        ngx_http_collab_msg_release(m);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    *b->last++ = '[';
    b->last = ngx_cpymem(b->last, m->json, m->len);
    *b->last++ = ']';
    b->last_buf = 1;
    b->last_in_chain = 1;

    ngx_http_collab_msg_release(m);

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_collab_post_respond(r, status,
                                                         &out,
                                                         b->last - b->pos));
}
