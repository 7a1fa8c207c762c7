
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * libFuzzer target of the y-websocket message parser
 * (ngx_http_collab_yjsparse.c): a client message, and the input again as
 * an awareness update.
 *
 * Checks: what is taken lies inside the input; a message taken, encoded
 * again with minimal integers, is taken again the same; every integer read
 * is at most 2^53 - 1 and is written back to the same value; the entries of
 * an awareness update lie inside it, in order, and the update rebuilt from
 * them reads as the same entries.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_collab_yjsparse.h"


#define FUZZ_CHECK(cond)                                                    \
    if (!(cond)) {                                                          \
        fprintf(stderr, "yjsparse_fuzz: %s:%d: %s\n", __FILE__, __LINE__,   \
                #cond);                                                     \
        abort();                                                            \
    }

#define FUZZ_ENTRIES  64


static void
fuzz_message(const unsigned char *in, size_t size)
{
    size_t                      n;
    unsigned char              *out;
    ngx_http_collab_yjs_msg_t   m, m2;

    if (ngx_http_collab_yjs_parse(in, size, &m) != 0) {
        FUZZ_CHECK(m.error != NULL);
        return;
    }

    FUZZ_CHECK(m.type == NGX_HTTP_COLLAB_YJS_SYNC
               || m.type == NGX_HTTP_COLLAB_YJS_AWARENESS
               || m.type == NGX_HTTP_COLLAB_YJS_QUERY);

    if (m.type == NGX_HTTP_COLLAB_YJS_QUERY) {
        return;
    }

    FUZZ_CHECK(m.sync <= NGX_HTTP_COLLAB_YJS_UPDATE);
    FUZZ_CHECK(m.data >= in && m.data + m.len <= in + size);

    out = malloc(2 + NGX_HTTP_COLLAB_YJS_UINT_LEN + m.len);
    FUZZ_CHECK(out != NULL);

    n = 0;
    out[n++] = (unsigned char) m.type;

    if (m.type == NGX_HTTP_COLLAB_YJS_SYNC) {
        out[n++] = (unsigned char) m.sync;
    }

    n += ngx_http_collab_yjs_put_uint(out + n, m.len);
    memcpy(out + n, m.data, m.len);
    n += m.len;

    FUZZ_CHECK(ngx_http_collab_yjs_parse(out, n, &m2) == 0);
    FUZZ_CHECK(m2.type == m.type && m2.sync == m.sync && m2.len == m.len);
    FUZZ_CHECK(m2.data + m2.len == out + n);
    FUZZ_CHECK(memcmp(m2.data, m.data, m.len) == 0);

    free(out);
}


static void
fuzz_uints(const unsigned char *in, size_t size)
{
    size_t          pos, pos2, n;
    uint64_t        v, v2;
    unsigned char   buf[NGX_HTTP_COLLAB_YJS_UINT_LEN];

    pos = 0;

    while (pos < size) {
        pos2 = pos;

        if (ngx_http_collab_yjs_uint(in, size, &pos, &v) != 0) {
            FUZZ_CHECK(pos == pos2);
            return;
        }

        FUZZ_CHECK(pos > pos2 && pos - pos2 <= NGX_HTTP_COLLAB_YJS_UINT_LEN);
        FUZZ_CHECK(v <= NGX_HTTP_COLLAB_YJS_UINT_MAX);

        n = ngx_http_collab_yjs_put_uint(buf, v);
        FUZZ_CHECK(n <= pos - pos2);

        pos2 = 0;
        FUZZ_CHECK(ngx_http_collab_yjs_uint(buf, n, &pos2, &v2) == 0);
        FUZZ_CHECK(pos2 == n && v2 == v);
    }
}


static void
fuzz_awareness(const unsigned char *in, size_t size)
{
    int                        rc;
    size_t                     pos, n, last, i;
    int64_t                    count;
    unsigned char             *out;
    ngx_http_collab_yjs_aw_t   aw[FUZZ_ENTRIES], aw2;

    pos = 0;
    count = -1;
    last = 0;
    i = 0;

    for ( ;; ) {
        rc = ngx_http_collab_yjs_aw_next(in, size, &pos, &count,
                                         &aw[i < FUZZ_ENTRIES ? i : 0]);
        if (rc <= 0) {
            break;
        }

        n = i < FUZZ_ENTRIES ? i : 0;
        FUZZ_CHECK(aw[n].start >= last && aw[n].start < pos && pos <= size);
        FUZZ_CHECK(aw[n].state >= in + aw[n].start
                   && aw[n].state + aw[n].state_len == in + pos);
        last = pos;
        i++;
    }

    if (rc < 0 || i == 0 || i > FUZZ_ENTRIES) {
        return;
    }

    /* rebuilt with minimal integers, it reads as the same entries */

    /* ids and clocks are any 64-bit value: 10 bytes at most */
    out = malloc(NGX_HTTP_COLLAB_YJS_UINT_LEN
                 + i * 3 * NGX_HTTP_COLLAB_YJS_UINT64_LEN + size);
    FUZZ_CHECK(out != NULL);

    n = ngx_http_collab_yjs_put_uint(out, i);

    for (last = 0; last < i; last++) {
        n += ngx_http_collab_yjs_put_uint(out + n, aw[last].client);
        n += ngx_http_collab_yjs_put_uint(out + n, aw[last].clock);
        n += ngx_http_collab_yjs_put_uint(out + n, aw[last].state_len);
        memcpy(out + n, aw[last].state, aw[last].state_len);
        n += aw[last].state_len;
    }

    pos = 0;
    count = -1;

    for (last = 0; last < i; last++) {
        FUZZ_CHECK(ngx_http_collab_yjs_aw_next(out, n, &pos, &count, &aw2)
                   == 1);
        FUZZ_CHECK(aw2.client == aw[last].client
                   && aw2.clock == aw[last].clock
                   && aw2.state_len == aw[last].state_len
                   && memcmp(aw2.state, aw[last].state, aw2.state_len) == 0);
    }

    FUZZ_CHECK(ngx_http_collab_yjs_aw_next(out, n, &pos, &count, &aw2) == 0);
    FUZZ_CHECK(pos == n);

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char  *in;

    /* an exactly sized copy: ASan sees any read past it */
    in = malloc(size ? size : 1);
    FUZZ_CHECK(in != NULL);
    memcpy(in, data, size);

    fuzz_message(in, size);
    fuzz_uints(in, size);
    fuzz_awareness(in, size);

    free(in);

    return 0;
}
