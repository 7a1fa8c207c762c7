
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
 * been stored (or refused).  Every message gets exactly one reply: what a
 * path forgets to answer is answered "internal" here.  Redis replies only
 * fill their slots; the request is finished from its own write event, never
 * from inside a Redis reply handler.
 */


/* a byte per slot after the reply pointers: answered or not */
#define ngx_http_collab_post_answered(s)                                     \
    ((u_char *) ((s)->replies + (s)->nreplies))


static ngx_int_t ngx_http_collab_post_is_json(ngx_http_request_t *r);
static void ngx_http_collab_post_body(ngx_http_request_t *r);
static json_t *ngx_http_collab_post_parse(ngx_http_request_t *r,
    ngx_str_t *body, size_t *n);
static ngx_uint_t ngx_http_collab_post_messages(ngx_http_collab_session_t *s,
    json_t *root, ngx_str_t *body, size_t n, ngx_msec_t *retry);
static ngx_msec_t ngx_http_collab_post_message(ngx_http_collab_session_t *s,
    json_t *root, ngx_uint_t i, ngx_str_t *raw);
static ngx_int_t ngx_http_collab_post_is_delta(json_t *msg);
static ngx_http_collab_msg_t *ngx_http_collab_post_limited(json_t *msg,
    ngx_msec_t retry);
static void ngx_http_collab_post_empty(ngx_http_request_t *r);
static ngx_int_t ngx_http_collab_post_read(ngx_http_request_t *r,
    ngx_str_t *body);
static void ngx_http_collab_post_finish(ngx_http_request_t *r);
static void ngx_http_collab_post_send(ngx_http_request_t *r,
    ngx_http_collab_session_t *s, ngx_uint_t status, ngx_msec_t retry);
static ngx_int_t ngx_http_collab_post_respond(ngx_http_request_t *r,
    ngx_uint_t status, ngx_chain_t *out, size_t len);
static void ngx_http_collab_post_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
static ngx_int_t ngx_http_collab_post_one(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_collab_msg_t *m);
static ngx_int_t ngx_http_collab_post_retry_after(ngx_http_request_t *r,
    ngx_msec_t retry);


static u_char  ngx_http_collab_post_lost[] =
    "{\"type\":\"error\",\"code\":\"internal\","
    "\"message\":\"no reply: the outcome is unknown\"}";


ngx_int_t
ngx_http_collab_post_start(ngx_http_request_t *r,
    ngx_http_collab_loc_conf_t *lcf)
{
    ngx_int_t                   rc, status;
    ngx_msec_t                  retry;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    if (!ngx_http_collab_post_is_json(r)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: POST without \"Content-Type: "
                      "application/json\"");
        return NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
    }

    s = ngx_http_collab_session_create(r, lcf,
                                       NGX_HTTP_COLLAB_TRANSPORT_POST,
                                       &status);
    if (s == NULL) {
        return status;
    }

    /* a flooder's body is not even parsed while its bucket is empty */

    if (ngx_http_collab_limit_post(s, 1, &retry) == NGX_BUSY) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: POST over the rate limit, refused whole");

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        m = ngx_http_collab_msg_build("error", "code", 'C', "rate_limited",
                                      "message", 'C', "too many messages: "
                                      "slow down", "retry_after_ms", 'I',
                                      (int64_t) retry, NULL);

        if (ngx_http_collab_post_retry_after(r, retry) != NGX_OK) {
            ngx_http_collab_msg_release(m);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_collab_post_one(r, NGX_HTTP_TOO_MANY_REQUESTS, m);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_collab_post_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * A browser sends a cross-site form or text/plain without asking; for
 * application/json it asks first (CORS preflight, OPTIONS: refused here).
 */

static ngx_int_t
ngx_http_collab_post_is_json(ngx_http_request_t *r)
{
    u_char           *p, *last;
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;

    if (h == NULL || h->value.len < sizeof("application/json") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "application/json",
                           sizeof("application/json") - 1)
           != 0)
    {
        return 0;
    }

    p = h->value.data + sizeof("application/json") - 1;
    last = h->value.data + h->value.len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    return p == last || *p == ';';
}


static void
ngx_http_collab_post_body(ngx_http_request_t *r)
{
    size_t                      n;
    json_t                     *root;
    ngx_str_t                   body;
    ngx_msec_t                  retry;
    ngx_uint_t                  limited;
    ngx_http_collab_session_t  *s;

    if (ngx_http_collab_post_read(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    root = ngx_http_collab_post_parse(r, &body, &n);
    if (root == NULL) {
        /* answered as a whole */
        return;
    }

    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);

    s->replies = ngx_pcalloc(r->pool,
                             n * (sizeof(ngx_http_collab_msg_t *) + 1));
    if (s->replies == NULL) {
        json_decref(root);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    s->nreplies = n;

    /* one more than the messages: nothing is sent before the loop ends */
    s->pending = n + 1;

    r->write_event_handler = ngx_http_collab_post_finish;

    limited = ngx_http_collab_post_messages(s, root, &body, n, &retry);

    json_decref(root);

    /*
     * The token was valid for every message; what is left is waiting for
     * Redis, which an expiry must not cut short.
     */

    if (s->expire.timer_set) {
        ngx_del_timer(&s->expire);
    }

    if (limited) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "collab: POST over the rate limit, %ui of %uz "
                      "messages refused", limited, n);
    }

    if (--s->pending == 0) {
        /* refused as a whole: a status that says so */
        ngx_http_collab_post_send(r, s,
                                  limited == n ? NGX_HTTP_TOO_MANY_REQUESTS
                                               : NGX_HTTP_OK,
                                  retry);
    }
}


/*
 * The body as JSON, with the number of messages it holds; NULL: the
 * request was answered as a whole (an error, or an empty array).
 */

static json_t *
ngx_http_collab_post_parse(ngx_http_request_t *r, ngx_str_t *body,
    size_t *n)
{
    int                           rc;
    size_t                        pos;
    json_t                       *root;
    json_error_t                  err;
    ngx_http_collab_loc_conf_t   *lcf;
    ngx_http_collab_json_span_t   span;
    u_char                        text[200];

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_collab_module);

    if (body->len == 0) {
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "invalid",
                                   "the request body is empty");
        return NULL;
    }

    /*
     * The scanner checks and counts without allocating: a body of many
     * small messages costs jansson far more memory than its size, so it
     * is decoded only once it is known to be within the limits.
     */

    if (ngx_http_collab_json_scan(body->data, body->len, NULL, 0, &span,
                                  &pos)
        != 0)
    {
        ngx_snprintf(text, sizeof(text) - 1, "invalid JSON at position "
                     "%uz%Z", pos);
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "invalid",
                                   (char *) text);
        return NULL;
    }

    pos = 0;
    *n = 0;

    do {
        rc = ngx_http_collab_json_element(body->data, body->len, &pos,
                                          &span);
        *n += (rc == 1);
    } while (rc == 1 && *n <= lcf->post_max_messages);

    if (rc == -1) {
        *n = 1;

        if (body->len > lcf->max_message) {
            ngx_http_collab_post_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "too_large", "the message is larger "
                                       "than collab_max_message");
            return NULL;
        }
    }

    if (*n == 0) {
        ngx_http_collab_post_empty(r);
        return NULL;
    }

    if (*n > lcf->post_max_messages) {
        ngx_snprintf(text, sizeof(text) - 1, "the body holds more than %ui "
                     "messages (collab_post_max_messages)%Z",
                     lcf->post_max_messages);
        ngx_http_collab_post_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "too_large", (char *) text);
        return NULL;
    }

    root = json_loadb((char *) body->data, body->len,
                      JSON_REJECT_DUPLICATES|JSON_DECODE_INT_AS_REAL, &err);

    if (root == NULL) {
        /* valid grammar: a duplicate name, a number out of range ... */
        ngx_snprintf(text, sizeof(text) - 1, "invalid JSON at position %d: "
                     "%s%Z", err.position, err.text);
        ngx_http_collab_post_error(r, NGX_HTTP_BAD_REQUEST, "invalid",
                                   (char *) text);
        return NULL;
    }

    return root;
}


/*
 * Each message is handled from its own text, so numbers stay as sent.
 * Returns how many the POST limit refused, with the longest wait in *retry.
 */

static ngx_uint_t
ngx_http_collab_post_messages(ngx_http_collab_session_t *s, json_t *root,
    ngx_str_t *body, size_t n, ngx_msec_t *retry)
{
    size_t                       i, pos;
    ngx_str_t                    raw;
    ngx_msec_t                   t;
    ngx_uint_t                   limited;
    ngx_http_collab_json_span_t  elem;

    limited = 0;
    *retry = 0;

    raw = *body;
    pos = 0;

    for (i = 0; i < n; i++) {
        if (json_is_array(root)) {
            if (ngx_http_collab_json_element(body->data, body->len, &pos,
                                             &elem)
                != 1)
            {
                ngx_str_null(&raw);

            } else {
                raw.data = body->data + elem.start;
                raw.len = elem.end - elem.start;
            }
        }

        t = ngx_http_collab_post_message(s, root, i, &raw);

        if (t) {
            limited++;
            *retry = ngx_max(*retry, t);
        }
    }

    return limited;
}


/* handles one message; > 0: refused by the POST limit, ms to wait */

static ngx_msec_t
ngx_http_collab_post_message(ngx_http_collab_session_t *s, json_t *root,
    ngx_uint_t i, ngx_str_t *raw)
{
    json_t       *msg;
    ngx_msec_t    retry;
    ngx_queue_t  *last;

    msg = json_is_array(root) ? json_array_get(root, i) : root;

    if (ngx_http_collab_limit_post(s, 0, &retry) == NGX_BUSY) {
        ngx_http_collab_post_reply(s, i,
                                   ngx_http_collab_post_limited(msg, retry));
        return ngx_max(retry, 1);
    }

    /* the limit of a WebSocket message holds for each message here */

    if (raw->data == NULL) {
        /* the scanner and jansson disagree: nothing is guessed */
        ngx_http_collab_post_reply(s, i,
            ngx_http_collab_msg_error("error", "invalid", NULL, NULL,
                                      "the message cannot be read"));
        return 0;
    }

    if (json_is_array(root) && raw->len > s->conf->max_message) {
        ngx_http_collab_post_reply(s, i,
            ngx_http_collab_msg_error("error", "too_large", NULL, NULL,
                                      "the message is larger than "
                                      "collab_max_message"));
        return 0;
    }

    /* a command sent for the message answers it later */
    last = ngx_queue_last(&s->cmds);

    ngx_http_collab_proto_handle(s, raw->data, raw->len, i);

    if (ngx_http_collab_post_answered(s)[i]
        || ngx_queue_last(&s->cmds) != last)
    {
        return 0;
    }

    ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                  "collab: message %ui of a POST got no reply", i);

    ngx_http_collab_post_reply(s, i, NULL);

    return 0;
}


static ngx_int_t
ngx_http_collab_post_is_delta(json_t *msg)
{
    const char  *type;

    type = json_string_value(json_object_get(msg, "type"));

    return type != NULL && ngx_strcmp(type, "delta") == 0;
}


/* a delta gets the nack a WebSocket would get; anything else an error */

static ngx_http_collab_msg_t *
ngx_http_collab_post_limited(json_t *msg, ngx_msec_t retry)
{
    json_t     *v, *d;
    ngx_str_t   id, doc;

    v = json_object_get(msg, "id");
    d = json_object_get(msg, "doc");

    if (json_is_string(v) && json_is_string(d)
        && ngx_http_collab_post_is_delta(msg))
    {
        id.data = (u_char *) json_string_value(v);
        id.len = json_string_length(v);
        doc.data = (u_char *) json_string_value(d);
        doc.len = json_string_length(d);

        if (id.len && id.len <= NGX_HTTP_COLLAB_OPID_MAX
            && ngx_http_collab_doc_id_valid(doc.data, doc.len))
        {
            return ngx_http_collab_msg_build("nack", "id", 'S', &id,
                                             "doc", 'S', &doc,
                                             "code", 'C', "rate_limited",
                                             "message", 'C', "too many "
                                             "messages: slow down",
                                             "retry_after_ms", 'I',
                                             (int64_t) retry, NULL);
        }
    }

    return ngx_http_collab_msg_build("error", "code", 'C', "rate_limited",
                                     "message", 'C', "too many messages: "
                                     "slow down", "retry_after_ms", 'I',
                                     (int64_t) retry, NULL);
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


/* m NULL: the reply could not be built; the slot is answered all the same */

void
ngx_http_collab_post_reply(ngx_http_collab_session_t *s, ngx_uint_t slot,
    ngx_http_collab_msg_t *m)
{
    u_char  *answered;

    answered = ngx_http_collab_post_answered(s);

    if (slot >= s->nreplies || answered[slot]) {
        /* one reply per message: the first one counts */
        ngx_http_collab_msg_release(m);
        return;
    }

    answered[slot] = 1;
    s->replies[slot] = m;

    if (m) {
        ngx_http_collab_metrics_out(m, m->len);
    }

    if (--s->pending == 0) {
        /* the caller may be a Redis reply handler: finish from the request */
        ngx_post_event(s->connection->write, &ngx_posted_events);
    }
}


/* the write handler of the request: answers once every slot is answered */

static void
ngx_http_collab_post_finish(ngx_http_request_t *r)
{
    ngx_http_collab_session_t  *s;

    s = ngx_http_get_module_ctx(r, ngx_http_collab_module);

    /* a write event before the last reply; or a session closed early */

    if (s == NULL || (s->pending && !s->closing)) {
        return;
    }

    ngx_http_collab_post_send(r, s, NGX_HTTP_OK, 0);
}


static void
ngx_http_collab_post_send(ngx_http_request_t *r, ngx_http_collab_session_t *s,
    ngx_uint_t status, ngx_msec_t retry)
{
    u_char                 *p;
    size_t                  len;
    ngx_buf_t              *b;
    ngx_uint_t              i;
    ngx_chain_t             out;
    ngx_http_collab_msg_t  *m;

    r->write_event_handler = ngx_http_request_empty_handler;

    if (retry && ngx_http_collab_post_retry_after(r, retry) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    len = 2;

    for (i = 0; i < s->nreplies; i++) {
        m = s->replies[i];
        len += (m ? m->len : sizeof(ngx_http_collab_post_lost) - 1) + 1;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = b->last;
    *p++ = '[';

    for (i = 0; i < s->nreplies; i++) {
        if (i) {
            *p++ = ',';
        }

        m = s->replies[i];

        p = m ? ngx_cpymem(p, m->json, m->len)
              : ngx_cpymem(p, ngx_http_collab_post_lost,
                           sizeof(ngx_http_collab_post_lost) - 1);
    }

    *p++ = ']';

    b->last = p;
    b->last_buf = 1;
    b->last_in_chain = 1;

    s->log_msgs_out += s->nreplies;
    s->log_bytes_out += p - b->pos;

    out.buf = b;
    out.next = NULL;

    ngx_http_finalize_request(r, ngx_http_collab_post_respond(r, status,
                                                              &out,
                                                              p - b->pos));
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
    ngx_http_finalize_request(r, ngx_http_collab_post_one(r, status,
                                     ngx_http_collab_msg_error("error", code,
                                         NULL, NULL, "%s", message)));
}


/* a response of one message, for the request as a whole */

static ngx_int_t
ngx_http_collab_post_one(ngx_http_request_t *r, ngx_uint_t status,
    ngx_http_collab_msg_t *m)
{
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, m->len + 2);
    if (b == NULL) {
        ngx_http_collab_msg_release(m);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *b->last++ = '[';
    b->last = ngx_cpymem(b->last, m->json, m->len);
    *b->last++ = ']';
    b->last_buf = 1;
    b->last_in_chain = 1;

    ngx_http_collab_msg_release(m);

    out.buf = b;
    out.next = NULL;

    return ngx_http_collab_post_respond(r, status, &out, b->last - b->pos);
}


static ngx_int_t
ngx_http_collab_post_retry_after(ngx_http_request_t *r, ngx_msec_t retry)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.len = ngx_sprintf(h->value.data, "%M", (retry + 999) / 1000)
                   - h->value.data;

    return NGX_OK;
}
