
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <string.h>

#include "ngx_http_collab_cursor.h"


static int ngx_http_collab_cursor_seq(const unsigned char *p, size_t len,
    int64_t *seq);


/* a non-negative decimal that fits an int64_t, as ngx_atoi() takes it */

static int
ngx_http_collab_cursor_seq(const unsigned char *p, size_t len, int64_t *seq)
{
    size_t   i;
    int64_t  n, d;

    if (len == 0) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        d = p[i] - '0';

        if (n > (INT64_MAX - d) / 10) {
            return -1;
        }

        n = n * 10 + d;
    }

    *seq = n;

    return 0;
}


int
ngx_http_collab_cursor_parse(const unsigned char *id, size_t id_len,
    const unsigned char *since, size_t since_len,
    const unsigned char *epoch, size_t epoch_len,
    ngx_http_collab_cursor_t *cursor)
{
    const unsigned char  *colon;

    cursor->since = -1;
    cursor->epoch = NULL;
    cursor->epoch_len = 0;

    if (id && id_len) {
        colon = memchr(id, ':', id_len);

        if (colon == NULL) {
            return ngx_http_collab_cursor_seq(id, id_len, &cursor->since);
        }

        if ((size_t) (colon - id) > NGX_HTTP_COLLAB_CURSOR_EPOCH_MAX) {
            return -1;
        }

        if (colon > id) {
            cursor->epoch = id;
            cursor->epoch_len = colon - id;
        }

        colon++;

        return ngx_http_collab_cursor_seq(colon, id + id_len - colon,
                                          &cursor->since);
    }

    if (since == NULL) {
        return 0;
    }

    if (ngx_http_collab_cursor_seq(since, since_len, &cursor->since) != 0) {
        return -1;
    }

    if (epoch) {
        if (epoch_len > NGX_HTTP_COLLAB_CURSOR_EPOCH_MAX) {
            return -1;
        }

        if (epoch_len) {
            cursor->epoch = epoch;
            cursor->epoch_len = epoch_len;
        }
    }

    return 0;
}
