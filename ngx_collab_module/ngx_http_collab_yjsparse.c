
/*
 * Copyright (C) ngx_collab_module authors
 */


#include "ngx_http_collab_yjsparse.h"


static int ngx_http_collab_yjs_uint64(const unsigned char *p, size_t len,
    size_t *pos, uint64_t *value);
static int ngx_http_collab_yjs_bytes(const unsigned char *p, size_t len,
    size_t *pos, const unsigned char **data, size_t *n);


int
ngx_http_collab_yjs_uint(const unsigned char *p, size_t len, size_t *pos,
    uint64_t *value)
{
    size_t    i;
    unsigned  shift;
    uint64_t  v;

    v = 0;
    shift = 0;

    for (i = *pos; i < len && shift < 7 * NGX_HTTP_COLLAB_YJS_UINT_LEN; i++)
    {
        v |= (uint64_t) (p[i] & 0x7f) << shift;
        shift += 7;

        if (p[i] < 0x80) {
            if (v > NGX_HTTP_COLLAB_YJS_UINT_MAX) {
                return -1;
            }

            *pos = i + 1;
            *value = v;
            return 0;
        }
    }

    return -1;
}


/*
 * A client id or clock of awareness: any 64-bit value, so that one out of
 * the range of JavaScript drops its entry instead of the message.
 */

static int
ngx_http_collab_yjs_uint64(const unsigned char *p, size_t len, size_t *pos,
    uint64_t *value)
{
    size_t    i;
    unsigned  shift;
    uint64_t  v;

    v = 0;

    for (i = *pos, shift = 0; i < len && shift < 70; i++, shift += 7) {
        if (shift < 64) {
            v |= (uint64_t) (p[i] & 0x7f) << shift;
        }

        if (p[i] < 0x80) {
            *pos = i + 1;
            *value = (shift > 63 - 7 && (p[i] >> (64 - shift)))
                     ? UINT64_MAX : v;
            return 0;
        }
    }

    return -1;
}


size_t
ngx_http_collab_yjs_put_uint(unsigned char *p, uint64_t v)
{
    size_t  n;

    n = 0;

    while (v > 0x7f) {
        p[n++] = (unsigned char) (0x80 | (v & 0x7f));
        v >>= 7;
    }

    p[n++] = (unsigned char) v;

    return n;
}


/* a byte array: its length, then the bytes */

static int
ngx_http_collab_yjs_bytes(const unsigned char *p, size_t len, size_t *pos,
    const unsigned char **data, size_t *n)
{
    uint64_t  v;

    if (ngx_http_collab_yjs_uint(p, len, pos, &v) != 0
        || v > (uint64_t) (len - *pos))
    {
        return -1;
    }

    *data = p + *pos;
    *n = (size_t) v;
    *pos += (size_t) v;

    return 0;
}


int
ngx_http_collab_yjs_parse(const unsigned char *p, size_t len,
    ngx_http_collab_yjs_msg_t *msg)
{
    size_t    pos;
    uint64_t  v;

    pos = 0;
    msg->data = NULL;
    msg->len = 0;
    msg->sync = 0;
    msg->error = NULL;

    if (ngx_http_collab_yjs_uint(p, len, &pos, &v) != 0) {
        msg->error = "truncated message type";
        return -1;
    }

    switch (v) {

    case NGX_HTTP_COLLAB_YJS_SYNC:
        msg->type = NGX_HTTP_COLLAB_YJS_SYNC;

        if (ngx_http_collab_yjs_uint(p, len, &pos, &v) != 0) {
            msg->error = "truncated sync message type";
            return -1;
        }

        if (v > NGX_HTTP_COLLAB_YJS_UPDATE) {
            msg->error = "unknown sync message type";
            return -1;
        }

        msg->sync = (unsigned) v;
        break;

    case NGX_HTTP_COLLAB_YJS_AWARENESS:
        msg->type = NGX_HTTP_COLLAB_YJS_AWARENESS;
        break;

    case NGX_HTTP_COLLAB_YJS_QUERY:
        msg->type = NGX_HTTP_COLLAB_YJS_QUERY;
        return 0;

    case NGX_HTTP_COLLAB_YJS_AUTH:
        /* only a server sends it */
        msg->error = "auth messages are sent by the server only";
        return -1;

    default:
        msg->error = "unknown message type";
        return -1;
    }

    if (ngx_http_collab_yjs_bytes(p, len, &pos, &msg->data, &msg->len) != 0)
    {
        msg->error = "truncated byte array";
        return -1;
    }

    return 0;
}


int
ngx_http_collab_yjs_aw_next(const unsigned char *p, size_t len,
    size_t *pos, int64_t *count, ngx_http_collab_yjs_aw_t *aw)
{
    uint64_t  v;

    if (*count < 0) {
        if (ngx_http_collab_yjs_uint(p, len, pos, &v) != 0) {
            return -1;
        }

        /* every entry takes 3 bytes at least */
        if (v > (uint64_t) (len - *pos) / 3) {
            return -1;
        }

        *count = (int64_t) v;
    }

    if (*count == 0) {
        return 0;
    }

    aw->start = *pos;

    if (ngx_http_collab_yjs_uint64(p, len, pos, &aw->client) != 0
        || ngx_http_collab_yjs_uint64(p, len, pos, &aw->clock) != 0
        || ngx_http_collab_yjs_bytes(p, len, pos, &aw->state,
                                     &aw->state_len)
           != 0)
    {
        return -1;
    }

    (*count)--;

    return 1;
}
