
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_collab_module.h"


/* the collab.v1 messages: decoding what clients send, encoding replies */


static ngx_int_t ngx_http_collab_proto_charge(ngx_http_collab_session_t *s,
    json_t *obj, const char *type, ngx_uint_t slot);
static ngx_int_t ngx_http_collab_proto_doc(ngx_http_collab_session_t *s,
    json_t *obj, ngx_str_t *doc, ngx_uint_t slot, const char *type,
    ngx_str_t *id);
static ngx_int_t ngx_http_collab_proto_seq(json_t *obj, const char *name,
    int64_t *value);
static void ngx_http_collab_proto_subscribe(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
static void ngx_http_collab_proto_unsubscribe(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
static void ngx_http_collab_proto_delta(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
static void ngx_http_collab_proto_state(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
static void ngx_http_collab_proto_ephemeral(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot, const char *type);
static void ngx_http_collab_proto_presence(ngx_http_collab_session_t *s,
    json_t *obj, ngx_uint_t slot);
static ngx_int_t ngx_http_collab_proto_dump(ngx_http_collab_session_t *s,
    json_t *value, ngx_str_t *out);
static ngx_http_collab_sub_t *ngx_http_collab_proto_member(
    ngx_http_collab_session_t *s, json_t *obj, ngx_uint_t slot,
    ngx_str_t *doc);
static void ngx_http_collab_proto_count(const char *type);


ngx_http_collab_msg_t *
ngx_http_collab_msg_alloc(size_t len)
{
    ngx_http_collab_msg_t  *m;

    m = ngx_alloc(sizeof(ngx_http_collab_msg_t) + NGX_HTTP_COLLAB_WS_HEADROOM
                  + len, ngx_cycle->log);
    if (m == NULL) {
        return NULL;
    }

    m->refs = 1;
    m->seq = 0;
    ngx_str_null(&m->type);
    ngx_str_null(&m->epoch);
    m->len = 0;
    m->json = m->data + NGX_HTTP_COLLAB_WS_HEADROOM;
    m->ws = NULL;
    m->ws_len = 0;
    m->sse = NULL;
    m->sse_len = 0;
    m->yjs = NULL;
    m->mtype = 0;

    return m;
}


void
ngx_http_collab_msg_release(ngx_http_collab_msg_t *m)
{
    if (m == NULL || --m->refs) {
        return;
    }

    if (m->sse) {
        ngx_free(m->sse);
    }

    ngx_http_collab_msg_release(m->yjs);

    ngx_free(m);
}


/*
 * Builds {"type":TYPE, key: value, ...} from a NULL-ended list of
 * (key, kind, value): 'S' ngx_str_t * string, 'C' char * string,
 * 'R' ngx_str_t * raw JSON (NULL for null), 'I' int64_t, 'B' int boolean.
 */

ngx_http_collab_msg_t *
ngx_http_collab_msg_build(const char *type, ...)
{
    int                     b;
    char                   *key, *cs;
    size_t                  len;
    u_char                 *p;
    int64_t                 n;
    va_list                 args;
    ngx_str_t              *str;
    ngx_http_collab_msg_t  *m;

    len = sizeof("{\"type\":\"\"}") + ngx_strlen(type);

    va_start(args, type);

    for ( ;; ) {
        key = va_arg(args, char *);
        if (key == NULL) {
            break;
        }

        len += ngx_strlen(key) + sizeof(",\"\":") - 1;

        switch (va_arg(args, int)) {

        case 'S':
            str = va_arg(args, ngx_str_t *);
            len += 2 + ngx_escape_json(NULL, str->data, str->len)
                   + str->len;
            break;

        case 'C':
            cs = va_arg(args, char *);
            len += 2 + ngx_escape_json(NULL, (u_char *) cs, ngx_strlen(cs))
                   + ngx_strlen(cs);
            break;

        case 'R':
            str = va_arg(args, ngx_str_t *);
            len += str ? str->len : 4;
            break;

        case 'I':
            (void) va_arg(args, int64_t);
            len += NGX_INT64_LEN;
            break;

        default: /* 'B' */
            (void) va_arg(args, int);
            len += 5;
            break;
        }
    }

    va_end(args);

    m = ngx_http_collab_msg_alloc(len);
    if (m == NULL) {
        return NULL;
    }

    p = ngx_sprintf(m->json, "{\"type\":\"%s\"", type);

    va_start(args, type);

    for ( ;; ) {
        key = va_arg(args, char *);
        if (key == NULL) {
            break;
        }

        p = ngx_sprintf(p, ",\"%s\":", key);

        switch (va_arg(args, int)) {

        case 'S':
            str = va_arg(args, ngx_str_t *);
            *p++ = '"';
            p = (u_char *) ngx_escape_json(p, str->data, str->len);
            *p++ = '"';
            break;

        case 'C':
            cs = va_arg(args, char *);
            *p++ = '"';
            p = (u_char *) ngx_escape_json(p, (u_char *) cs, ngx_strlen(cs));
            *p++ = '"';
            break;

        case 'R':
            str = va_arg(args, ngx_str_t *);
            if (str) {
                p = ngx_cpymem(p, str->data, str->len);

            } else {
                p = ngx_cpymem(p, "null", 4);
            }
            break;

        case 'I':
            n = va_arg(args, int64_t);
            p = ngx_sprintf(p, "%L", n);
            break;

        default: /* 'B' */
            b = va_arg(args, int);
            p = b ? ngx_cpymem(p, "true", 4) : ngx_cpymem(p, "false", 5);
            break;
        }
    }

    va_end(args);

    *p++ = '}';

    m->len = p - m->json;
    m->type.data = (u_char *) type;
    m->type.len = ngx_strlen(type);

    return m;
}


/*
 * Client text echoed into an error, cut at the buffer's end, must still be
 * UTF-8 in a text frame (a browser closes with 1007 otherwise): a sequence
 * cut at the end is dropped, a broken one inside becomes '?'.
 */

static size_t
ngx_http_collab_msg_utf8(u_char *text, size_t len)
{
    u_char  *p, *q, *last, *start;

    p = text;
    q = text;
    last = text + len;

    while (p < last) {
        if (*p < 0x80) {
            *q++ = *p++;
            continue;
        }

        start = p;

        switch (ngx_utf8_decode(&p, last - p)) {

        case 0xfffffffe:
            /* incomplete: the cut */
            return q - text;

        case 0xffffffff:
            *q++ = '?';
            break;

        default:
            q = ngx_movemem(q, start, p - start);
        }
    }

    return q - text;
}


/* nack or error: {"type", "id"?, "doc"?, "code", "message"} */

ngx_http_collab_msg_t *
ngx_http_collab_msg_error(const char *type, const char *code, ngx_str_t *doc,
    ngx_str_t *id, const char *fmt, ...)
{
    u_char     *p;
    va_list     args;
    ngx_str_t   text, none;
    u_char      buf[256];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    text.data = buf;
    text.len = ngx_http_collab_msg_utf8(buf, p - buf);

    ngx_str_null(&none);

    if (id && id->len && doc && doc->len) {
        return ngx_http_collab_msg_build(type, "id", 'S', id, "doc", 'S', doc,
                                         "code", 'C', code,
                                         "message", 'S', &text, NULL);
    }

    if (id && id->len) {
        return ngx_http_collab_msg_build(type, "id", 'S', id, "code", 'C',
                                         code, "message", 'S', &text, NULL);
    }

    if (doc && doc->len) {
        return ngx_http_collab_msg_build(type, "doc", 'S', doc, "code", 'C',
                                         code, "message", 'S', &text, NULL);
    }

    return ngx_http_collab_msg_build(type, "code", 'C', code,
                                     "message", 'S', &text, NULL);
}


/* rate_limited: {"type", "id"?, "doc"?, "code", "message", "retry_after_ms"} */

ngx_http_collab_msg_t *
ngx_http_collab_msg_busy(const char *type, ngx_str_t *doc, ngx_str_t *id,
    ngx_msec_t retry)
{
    const char  *text;

    text = (type[0] == 'n') ? "too many deltas: slow down"
                            : "too many messages: slow down";

    if (id && id->len && doc && doc->len) {
        return ngx_http_collab_msg_build(type, "id", 'S', id, "doc", 'S', doc,
                                         "code", 'C', "rate_limited",
                                         "message", 'C', text,
                                         "retry_after_ms", 'I',
                                         (int64_t) retry, NULL);
    }

    if (doc && doc->len) {
        return ngx_http_collab_msg_build(type, "doc", 'S', doc,
                                         "code", 'C', "rate_limited",
                                         "message", 'C', text,
                                         "retry_after_ms", 'I',
                                         (int64_t) retry, NULL);
    }

    return ngx_http_collab_msg_build(type, "code", 'C', "rate_limited",
                                     "message", 'C', text,
                                     "retry_after_ms", 'I', (int64_t) retry,
                                     NULL);
}


/* a delta read back from the log, in the form pub/sub carries it */

ngx_http_collab_msg_t *
ngx_http_collab_msg_delta(ngx_str_t *doc, uint64_t seq, ngx_str_t *id,
    ngx_str_t *user, ngx_str_t *ts, ngx_str_t *data)
{
    size_t                  len;
    u_char                 *p;
    ngx_http_collab_msg_t  *m;

    len = sizeof("{\"type\":\"delta\",\"doc\":\"\",\"seq\":,\"id\":\"\","
                 "\"user\":\"\",\"ts\":,\"data\":}")
          + doc->len + NGX_INT64_LEN
          + id->len + ngx_escape_json(NULL, id->data, id->len)
          + user->len + ngx_escape_json(NULL, user->data, user->len)
          + ts->len + data->len;

    m = ngx_http_collab_msg_alloc(len);
    if (m == NULL) {
        return NULL;
    }

    p = ngx_sprintf(m->json, "{\"type\":\"delta\",\"doc\":\"%V\",\"seq\":%uL,"
                    "\"id\":\"", doc, seq);
    p = (u_char *) ngx_escape_json(p, id->data, id->len);
    p = ngx_cpymem(p, "\",\"user\":\"", sizeof("\",\"user\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, user->data, user->len);
    p = ngx_sprintf(p, "\",\"ts\":%V,\"data\":%V}", ts, data);

    m->len = p - m->json;
    m->seq = seq;
    ngx_str_set(&m->type, "delta");

    return m;
}


void
ngx_http_collab_reply(ngx_http_collab_session_t *s, ngx_uint_t slot,
    ngx_http_collab_msg_t *m)
{
    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST) {
        /* even without a message: the slot must not wait forever */
        ngx_http_collab_post_reply(s, slot, m);
        return;
    }

    if (m == NULL) {
        return;
    }

    (void) ngx_http_collab_session_send(s, m);
    ngx_http_collab_msg_release(m);
}


/*
 * The client instance id ("client" argument): clients that share an
 * identity keep their op ids apart with it.  Only A-Za-z0-9_- are taken,
 * so the argument needs no unescaping.
 */

ngx_int_t
ngx_http_collab_proto_client(ngx_http_collab_session_t *s,
    ngx_http_request_t *r)
{
    size_t     i;
    u_char     ch;
    ngx_str_t  v;

    s->client_len = 0;

    if (ngx_http_arg(r, (u_char *) "client", 6, &v) != NGX_OK) {
        return NGX_OK;
    }

    if (v.len < NGX_HTTP_COLLAB_CLIENT_MIN
        || v.len > NGX_HTTP_COLLAB_CLIENT_MAX)
    {
        goto invalid;
    }

    for (i = 0; i < v.len; i++) {
        ch = v.data[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
        {
            goto invalid;
        }
    }

    ngx_memcpy(s->client, v.data, v.len);
    s->client_len = v.len;

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "collab: the \"client\" argument must be %d-%d "
                  "characters of A-Za-z0-9_-",
                  NGX_HTTP_COLLAB_CLIENT_MIN, NGX_HTTP_COLLAB_CLIENT_MAX);

    return NGX_DECLINED;
}


/*
 * Integers are decoded as reals: jansson refuses integers beyond 64 bits,
 * which are valid JSON.  The "data" a message carries is taken from its
 * text as it came, not from the decoded value: numbers keep their digits.
 */

void
ngx_http_collab_proto_handle(ngx_http_collab_session_t *s, u_char *text,
    size_t len, ngx_uint_t slot)
{
    size_t                       pos;
    json_t                      *obj;
    json_error_t                 err;
    ngx_http_collab_json_span_t  data;

    s->cur_len = len;
    s->log_msgs_in++;

    ngx_http_collab_metric_add(NGX_HTTP_COLLAB_M_BYTES_IN, len);

    obj = json_loadb((char *) text, len,
                     JSON_REJECT_DUPLICATES|JSON_DECODE_INT_AS_REAL, &err);

    if (obj == NULL) {
        if (ngx_http_collab_proto_charge(s, NULL, NULL, slot) != NGX_OK) {
            return;
        }

        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "invalid JSON at position "
                                  "%d: %s", err.position, err.text));
        return;
    }

    if (ngx_http_collab_json_scan(text, len, "data", 4, &data, &pos) != 0) {
        json_decref(obj);
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "invalid JSON at position "
                                  "%uz", pos));
        return;
    }

    if (data.found) {
        s->cur_data.data = text + data.start;
        s->cur_data.len = data.end - data.start;
    }

    (void) ngx_http_collab_proto_handle_json(s, obj, slot);

    ngx_str_null(&s->cur_data);

    json_decref(obj);
}


ngx_int_t
ngx_http_collab_proto_handle_json(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    const char  *type;

    if (!json_is_object(obj)) {
        if (ngx_http_collab_proto_charge(s, NULL, NULL, slot) != NGX_OK) {
            return NGX_OK;
        }

        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL,
                                  "a message must be a JSON object"));
        return NGX_OK;
    }

    type = json_string_value(json_object_get(obj, "type"));

    ngx_http_collab_proto_count(type);

    /* every message is charged to the session's budget before any work */

    if (ngx_http_collab_proto_charge(s, obj, type, slot) != NGX_OK) {
        return NGX_OK;
    }

    if (type == NULL) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL,
                                  "\"type\" must be a string"));
        return NGX_OK;
    }

    if (ngx_strcmp(type, "auth") == 0) {
        ngx_http_collab_auth_message(s, obj, slot);
        return NGX_OK;
    }

    if (!s->authenticated) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error",
                                  "unauthorized", NULL, NULL,
                                  "send \"auth\" first"));
        return NGX_OK;
    }

    if (ngx_strcmp(type, "delta") == 0) {
        ngx_http_collab_proto_delta(s, obj, slot);

    } else if (ngx_strcmp(type, "subscribe") == 0) {
        ngx_http_collab_proto_subscribe(s, obj, slot);

    } else if (ngx_strcmp(type, "unsubscribe") == 0) {
        ngx_http_collab_proto_unsubscribe(s, obj, slot);

    } else if (ngx_strcmp(type, "state") == 0) {
        ngx_http_collab_proto_state(s, obj, slot);

    } else if (ngx_strcmp(type, "intent") == 0) {
        ngx_http_collab_proto_ephemeral(s, obj, slot, type);

    } else if (ngx_strcmp(type, "presence") == 0) {
        ngx_http_collab_proto_presence(s, obj, slot);

    } else {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "unknown message type \"%s\"",
                                  type));
    }

    return NGX_OK;
}


/* collab_messages_in_total: a type clients do not send counts as other */

static void
ngx_http_collab_proto_count(const char *type)
{
    ngx_uint_t  mt;

    mt = NGX_HTTP_COLLAB_MT_OTHER;

    if (type) {
        mt = ngx_http_collab_metrics_type((u_char *) type, ngx_strlen(type));

        if (mt > NGX_HTTP_COLLAB_MT_PRESENCE) {
            mt = NGX_HTTP_COLLAB_MT_OTHER;
        }
    }

    ngx_http_collab_metric_inc(NGX_HTTP_COLLAB_M_IN + mt);
}


/*
 * Charges a message by its type (NGX_HTTP_COLLAB_COST_*).  Over the budget
 * it is refused: a delta with nack rate_limited, intents and presence
 * dropped quietly (unless a POST waits for an answer), anything else with
 * error rate_limited, all with retry_after_ms; NGX_DONE: the session was
 * closed for flooding.
 */

static ngx_int_t
ngx_http_collab_proto_charge(ngx_http_collab_session_t *s, json_t *obj,
    const char *type, ngx_uint_t slot)
{
    json_t      *v;
    ngx_int_t    rc;
    ngx_str_t    doc, id;
    ngx_uint_t   cost, ephemeral;
    ngx_msec_t   retry;
    const char  *reply;

    cost = NGX_HTTP_COLLAB_COST_DELTA;
    reply = "error";
    ephemeral = 0;

    if (type == NULL) {
        /* not a message: costs a delta */

    } else if (ngx_strcmp(type, "delta") == 0) {
        reply = "nack";

    } else if (ngx_strcmp(type, "subscribe") == 0) {
        cost = NGX_HTTP_COLLAB_COST_SUBSCRIBE;

    } else if (ngx_strcmp(type, "state") == 0) {
        cost = NGX_HTTP_COLLAB_COST_STATE;

    } else if (ngx_strcmp(type, "auth") == 0) {
        cost = NGX_HTTP_COLLAB_COST_AUTH;

    } else if (ngx_strcmp(type, "intent") == 0
               || ngx_strcmp(type, "presence") == 0)
    {
        ephemeral = 1;
    }

    rc = ngx_http_collab_limit_message(s, cost, s->cur_len, &retry);

    if (rc != NGX_BUSY) {
        return rc;
    }

    if (ephemeral && slot == NGX_HTTP_COLLAB_NO_SLOT) {
        /* the next one supersedes it */
        return NGX_BUSY;
    }

    /* the answer names what it refuses when it can */

    ngx_str_null(&doc);
    ngx_str_null(&id);

    v = obj ? json_object_get(obj, "doc") : NULL;

    if (json_is_string(v)
        && ngx_http_collab_doc_id_valid((u_char *) json_string_value(v),
                                        json_string_length(v)))
    {
        doc.data = (u_char *) json_string_value(v);
        doc.len = json_string_length(v);
    }

    v = obj ? json_object_get(obj, "id") : NULL;

    if (json_is_string(v) && json_string_length(v) <= NGX_HTTP_COLLAB_OPID_MAX)
    {
        id.data = (u_char *) json_string_value(v);
        id.len = json_string_length(v);
    }

    ngx_http_collab_reply(s, slot,
                          ngx_http_collab_msg_busy(reply, &doc, &id, retry));

    return NGX_BUSY;
}


/* fetches and checks "doc"; on failure replies and returns NGX_DECLINED */

static ngx_int_t
ngx_http_collab_proto_doc(ngx_http_collab_session_t *s, json_t *obj,
    ngx_str_t *doc, ngx_uint_t slot, const char *type, ngx_str_t *id)
{
    json_t  *v;

    v = json_object_get(obj, "doc");

    if (!json_is_string(v)) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error(type, "invalid", NULL,
                                  id, "\"doc\" must be a string"));
        return NGX_DECLINED;
    }

    doc->data = (u_char *) json_string_value(v);
    doc->len = json_string_length(v);

    if (!ngx_http_collab_doc_id_valid(doc->data, doc->len)) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error(type, "invalid", NULL,
                                  id, "\"doc\" must be 1-128 characters of "
                                  "A-Za-z0-9._:-"));
        return NGX_DECLINED;
    }

    ngx_http_collab_log_doc(s, doc);

    return NGX_OK;
}


/*
 * An optional non-negative integer: NGX_DECLINED when absent.  Integers
 * come decoded as reals from a WebSocket (see proto_handle): an integral
 * real up to 2^53 is taken.
 */

static ngx_int_t
ngx_http_collab_proto_seq(json_t *obj, const char *name, int64_t *value)
{
    double   d;
    json_t  *v;

    v = json_object_get(obj, name);

    if (v == NULL || json_is_null(v)) {
        return NGX_DECLINED;
    }

    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            return NGX_ERROR;
        }

        *value = json_integer_value(v);
        return NGX_OK;
    }

    if (!json_is_real(v)) {
        return NGX_ERROR;
    }

    d = json_real_value(v);

    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double) (int64_t) d) {
        return NGX_ERROR;
    }

    *value = (int64_t) d;

    return NGX_OK;
}


static void
ngx_http_collab_proto_subscribe(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    json_t     *v;
    int64_t     since;
    ngx_int_t   rc;
    ngx_str_t   doc, epoch;

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "\"subscribe\" needs a "
                                  "WebSocket or an event stream"));
        return;
    }

    if (ngx_http_collab_proto_doc(s, obj, &doc, slot, "error", NULL)
        != NGX_OK)
    {
        return;
    }

    rc = ngx_http_collab_proto_seq(obj, "since", &since);

    if (rc == NGX_ERROR) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "\"since\" must be a "
                                  "non-negative integer"));
        return;
    }

    if (rc == NGX_DECLINED) {
        since = -1;
    }

    ngx_str_null(&epoch);

    v = json_object_get(obj, "epoch");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0
            || json_string_length(v) > 64)
        {
            ngx_http_collab_reply(s, slot,
                                  ngx_http_collab_msg_error("error",
                                      "invalid", &doc, NULL, "\"epoch\" must "
                                      "be the string from \"subscribed\""));
            return;
        }

        epoch.data = (u_char *) json_string_value(v);
        epoch.len = json_string_length(v);
    }

    (void) ngx_http_collab_doc_subscribe(s, &doc, since, &epoch);
}


static void
ngx_http_collab_proto_unsubscribe(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    ngx_str_t  doc;

    if (s->transport == NGX_HTTP_COLLAB_TRANSPORT_POST) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  NULL, NULL, "\"unsubscribe\" needs a "
                                  "WebSocket or an event stream"));
        return;
    }

    if (ngx_http_collab_proto_doc(s, obj, &doc, slot, "error", NULL)
        != NGX_OK)
    {
        return;
    }

    (void) ngx_http_collab_doc_unsubscribe(s, &doc);
}


static void
ngx_http_collab_proto_delta(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    json_t      *v;
    int64_t      base;
    ngx_int_t    rc;
    ngx_str_t    doc, id, data;

    ngx_str_null(&id);

    v = json_object_get(obj, "id");

    if (json_is_string(v)) {
        id.data = (u_char *) json_string_value(v);
        id.len = json_string_length(v);
    }

    if (id.len == 0 || id.len > NGX_HTTP_COLLAB_OPID_MAX) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("nack", "invalid",
                                  NULL, NULL, "\"id\" must be a string of "
                                  "1-128 characters"));
        return;
    }

    if (ngx_http_collab_proto_doc(s, obj, &doc, slot, "nack", &id)
        != NGX_OK)
    {
        return;
    }

    rc = ngx_http_collab_proto_seq(obj, "base", &base);

    if (rc == NGX_ERROR) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("nack", "invalid",
                                  &doc, &id, "\"base\" must be a "
                                  "non-negative integer"));
        return;
    }

    if (rc == NGX_DECLINED) {
        base = -1;
    }

    v = json_object_get(obj, "data");

    if (v == NULL) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("nack", "invalid",
                                  &doc, &id, "\"data\" is missing"));
        return;
    }

    if (ngx_http_collab_acl_check(s, &doc, NGX_HTTP_COLLAB_ROLE_EDITOR,
                                  "delta")
        != NGX_OK)
    {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("nack", "forbidden",
                                  &doc, &id, "editing this document is "
                                  "not allowed"));
        return;
    }

    if (ngx_http_collab_proto_dump(s, v, &data) != NGX_OK) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("nack", "internal",
                                  &doc, &id, "out of memory"));
        return;
    }

    (void) ngx_http_collab_store_append(s, &doc, &id, &data, base, slot);

    ngx_free(data.data);
}


static void
ngx_http_collab_proto_state(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    json_t     *v;
    int64_t     seq;
    ngx_str_t   doc, data;

    if (ngx_http_collab_proto_doc(s, obj, &doc, slot, "error", NULL)
        != NGX_OK)
    {
        return;
    }

    /* a snapshot would no longer be the merge of the log */
    if (s->conf->merge == NGX_HTTP_COLLAB_MERGE_JSON) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "the server keeps the state "
                                  "of this document (collab_merge "
                                  "json-merge)"));
        return;
    }

    if (ngx_http_collab_proto_seq(obj, "seq", &seq) != NGX_OK) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "\"seq\" must be a "
                                  "non-negative integer"));
        return;
    }

    v = json_object_get(obj, "data");

    if (v == NULL) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "\"data\" is missing"));
        return;
    }

    if (ngx_http_collab_acl_check(s, &doc, NGX_HTTP_COLLAB_ROLE_EDITOR,
                                  "state")
        != NGX_OK)
    {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "forbidden",
                                  &doc, NULL, "storing a state of this "
                                  "document is not allowed"));
        return;
    }

    if (ngx_http_collab_proto_dump(s, v, &data) != NGX_OK) {
        return;
    }

    (void) ngx_http_collab_store_state(s, &doc, seq, &data, slot);

    ngx_free(data.data);
}


/* intents: relayed to the document's subscribers, not stored */

static void
ngx_http_collab_proto_ephemeral(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot, const char *type)
{
    json_t                 *v;
    ngx_str_t               doc, data, sid;
    ngx_uint_t              need;
    ngx_http_collab_sub_t  *sub;
    ngx_http_collab_msg_t  *m;

    /* ephemera go only where the sender is a member with a known role */

    sub = ngx_http_collab_proto_member(s, obj, slot, &doc);
    if (sub == NULL) {
        return;
    }

    need = NGX_HTTP_COLLAB_ROLE_COMMENTER;

    if (sub->role < need) {
        ngx_http_collab_acl_deny(s, &doc, type);
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "forbidden",
                                  &doc, NULL, "\"%s\" is not allowed on "
                                  "this document", type));
        return;
    }

    v = json_object_get(obj, "data");

    if (v == NULL) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "\"data\" is missing"));
        return;
    }

    if (ngx_http_collab_proto_dump(s, v, &data) != NGX_OK) {
        return;
    }

    sid.data = s->id;
    sid.len = sizeof(s->id);

    m = ngx_http_collab_msg_build(type, "doc", 'S', &doc, "user", 'S',
                                  &s->user, "session", 'S', &sid,
                                  "data", 'R', &data, NULL);

    ngx_free(data.data);

    if (m == NULL) {
        return;
    }

    if (ngx_http_collab_doc_publish(s, &doc, m) != NGX_OK) {
        ngx_http_collab_msg_release(m);

        if (slot != NGX_HTTP_COLLAB_NO_SLOT) {
            ngx_http_collab_reply(s, slot,
                                  ngx_http_collab_msg_error("error",
                                      "unavailable", &doc, NULL,
                                      "the document store is unavailable"));
        }

        return;
    }

    ngx_http_collab_msg_release(m);

    if (slot != NGX_HTTP_COLLAB_NO_SLOT) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_build("ok", "doc", 'S',
                                                        &doc, NULL));
    }
}


/*
 * A member's presence: kept (coalesced, see presence.c) and shown to the
 * document's subscribers, viewers included.
 */

static void
ngx_http_collab_proto_presence(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot)
{
    json_t                 *v;
    ngx_str_t               doc, data;
    ngx_http_collab_sub_t  *sub;

    sub = ngx_http_collab_proto_member(s, obj, slot, &doc);
    if (sub == NULL) {
        return;
    }

    if (sub->role < NGX_HTTP_COLLAB_ROLE_VIEWER) {
        ngx_http_collab_acl_deny(s, &doc, "presence");
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "forbidden",
                                  &doc, NULL, "\"presence\" is not allowed "
                                  "on this document"));
        return;
    }

    v = json_object_get(obj, "data");

    if (v == NULL) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  &doc, NULL, "\"data\" is missing"));
        return;
    }

    if (ngx_http_collab_proto_dump(s, v, &data) != NGX_OK) {
        return;
    }

    if (data.len > s->conf->presence_size) {
        ngx_free(data.data);
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "too_large",
                                  &doc, NULL, "presence data is larger than "
                                  "%uz bytes", s->conf->presence_size));
        return;
    }

    ngx_http_collab_presence_set(sub, &data);

    ngx_free(data.data);

    if (slot != NGX_HTTP_COLLAB_NO_SLOT) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_build("ok", "doc", 'S',
                                                        &doc, NULL));
    }
}


/*
 * The "data" to store or relay: the client's own text, without the white
 * space between tokens (so without line breaks, which an event stream
 * cannot carry), never longer than what came.  A message decoded elsewhere
 * (no text at hand) is encoded again.
 */

static ngx_int_t
ngx_http_collab_proto_dump(ngx_http_collab_session_t *s, json_t *value,
    ngx_str_t *out)
{
    char  *p;

    if (s->cur_data.data) {
        out->data = ngx_alloc(s->cur_data.len, s->connection->log);
        if (out->data == NULL) {
            return NGX_ERROR;
        }

        out->len = ngx_http_collab_json_compact(out->data, s->cur_data.data,
                                                s->cur_data.len);
        return NGX_OK;
    }

    p = json_dumps(value, JSON_COMPACT|JSON_ENCODE_ANY);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = (u_char *) p;
    out->len = ngx_strlen(p);

    return NGX_OK;
}


/* the sender's membership of the message's document, or NULL: answered */

static ngx_http_collab_sub_t *
ngx_http_collab_proto_member(ngx_http_collab_session_t *s, json_t *obj,
    ngx_uint_t slot, ngx_str_t *doc)
{
    ngx_http_collab_sub_t  *sub;

    if (ngx_http_collab_proto_doc(s, obj, doc, slot, "error", NULL)
        != NGX_OK)
    {
        return NULL;
    }

    sub = ngx_http_collab_doc_find(s, doc);

    if (sub == NULL || sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {
        ngx_http_collab_reply(s, slot,
                              ngx_http_collab_msg_error("error", "invalid",
                                  doc, NULL, "not subscribed to this "
                                  "document"));
        return NULL;
    }

    return sub;
}
