
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * libFuzzer target of the WebSocket client frame parser.
 *
 * Input: byte 0-1 seed the read splits, byte 2 picks max_message, the rest
 * is the byte stream from the client.  The stream is parsed twice: in
 * pseudo-random reads, each copied to its own exactly sized heap block so
 * that ASan sees any access past a read, and as one read.  Both runs must
 * satisfy the parser's contract and give the same events.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_collab_wsparse.h"


#define FUZZ_CHECK(cond)                                                    \
    if (!(cond)) {                                                          \
        fprintf(stderr, "wsparse_fuzz: %s:%d: %s\n", __FILE__, __LINE__,    \
                #cond);                                                     \
        abort();                                                            \
    }


typedef struct {
    uint64_t   hash;        /* of the normalized event sequence */
    size_t     events;
    unsigned   error;       /* close code, 0 when no error */
} fuzz_transcript_t;


typedef struct {
    uint32_t   rnd;
    uint64_t   max;

    /* message being reassembled */
    int        in_message;
    unsigned   opcode;
    uint64_t   len;
    uint64_t   hash;
    unsigned char  *msg;
} fuzz_run_t;


static const uint64_t  fuzz_max[8] = {
    0, 1, 7, 125, 126, 1000, 65536, (uint64_t) -1
};


static uint64_t
fuzz_hash(uint64_t h, const void *data, size_t len)
{
    size_t               i;
    const unsigned char *p;

    p = data;

    for (i = 0; i < len; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }

    return h;
}


static uint64_t
fuzz_hash_u(uint64_t h, uint64_t v)
{
    return fuzz_hash(h, &v, sizeof(uint64_t));
}


static uint32_t
fuzz_random(fuzz_run_t *r)
{
    /* xorshift32: any seed but 0 */
    r->rnd ^= r->rnd << 13;
    r->rnd ^= r->rnd >> 17;
    r->rnd ^= r->rnd << 5;

    return r->rnd;
}


static size_t
fuzz_chunk(fuzz_run_t *r, size_t left)
{
    size_t    n;
    uint32_t  x;

    static const size_t  scale[8] = { 1, 1, 2, 3, 8, 17, 100, 4096 };

    x = fuzz_random(r);
    n = 1 + (x >> 3) % scale[x & 7];

    return (n < left) ? n : left;
}


/* an independent UTF-8 check, to not trust the parser's DFA */

static int
fuzz_utf8(const unsigned char *s, size_t n)
{
    size_t    i, k, need;
    uint32_t  c, cp, min;

    for (i = 0; i < n; /* void */) {
        c = s[i];

        if (c < 0x80) {
            i++;
            continue;
        }

        if ((c & 0xe0) == 0xc0) {
            need = 1; cp = c & 0x1f; min = 0x80;

        } else if ((c & 0xf0) == 0xe0) {
            need = 2; cp = c & 0x0f; min = 0x800;

        } else if ((c & 0xf8) == 0xf0) {
            need = 3; cp = c & 0x07; min = 0x10000;

        } else {
            return 0;
        }

        if (n - i - 1 < need) {
            return 0;
        }

        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            cp = (cp << 6) | (s[i + k] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }

        i += need + 1;
    }

    return 1;
}


static unsigned
fuzz_close_check(const unsigned char *p, size_t len)
{
    unsigned  code;

    if (len == 0) {
        return 0;
    }

    if (len == 1) {
        return 1002;
    }

    code = (unsigned) p[0] << 8 | p[1];

    if ((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014)
        || (code >= 3000 && code <= 4999))
    {
        return fuzz_utf8(p + 2, len - 2) ? 0 : 1007;
    }

    return 1002;
}


/*
 * Parses [start, last) as one read; returns 1 when the parser failed.
 * The message bytes are copied to r->msg (sized for the whole input) so
 * that a text message can be checked whole at MSG_END.
 */

static int
fuzz_read(fuzz_run_t *r, ngx_http_collab_ws_parser_t *p, unsigned char *start,
    unsigned char *last, fuzz_transcript_t *t)
{
    int             rc, rc2;
    unsigned        code;
    unsigned char  *pos, *prev;

    pos = start;

    for ( ;; ) {
        prev = pos;
        rc = ngx_http_collab_ws_parse(p, &pos, last);

        FUZZ_CHECK(pos >= prev && pos <= last);

        switch (rc) {

        case NGX_HTTP_COLLAB_WS_AGAIN:
            FUZZ_CHECK(pos == last);
            return 0;

        case NGX_HTTP_COLLAB_WS_MSG_START:
            FUZZ_CHECK(!r->in_message);
            FUZZ_CHECK(p->opcode == NGX_HTTP_COLLAB_WS_OP_TEXT
                       || p->opcode == NGX_HTTP_COLLAB_WS_OP_BINARY);

            r->in_message = 1;
            r->opcode = p->opcode;
            r->len = 0;
            r->hash = 14695981039346656037ULL;
            break;

        case NGX_HTTP_COLLAB_WS_MSG_DATA:
            FUZZ_CHECK(r->in_message);
            FUZZ_CHECK(p->opcode == r->opcode);
            FUZZ_CHECK(p->len > 0);
            FUZZ_CHECK(p->data >= start && p->data + p->len <= pos);

            memcpy(r->msg + r->len, p->data, p->len);
            r->hash = fuzz_hash(r->hash, p->data, p->len);
            r->len += p->len;

            FUZZ_CHECK(r->len <= r->max);
            break;

        case NGX_HTTP_COLLAB_WS_MSG_END:
            FUZZ_CHECK(r->in_message);
            FUZZ_CHECK(p->opcode == r->opcode);

            if (r->opcode == NGX_HTTP_COLLAB_WS_OP_TEXT) {
                FUZZ_CHECK(fuzz_utf8(r->msg, r->len));
            }

            r->in_message = 0;
            break;

        case NGX_HTTP_COLLAB_WS_CONTROL:
            FUZZ_CHECK(p->opcode == NGX_HTTP_COLLAB_WS_OP_CLOSE
                       || p->opcode == NGX_HTTP_COLLAB_WS_OP_PING
                       || p->opcode == NGX_HTTP_COLLAB_WS_OP_PONG);
            FUZZ_CHECK(p->len <= 125);
            FUZZ_CHECK(p->data == p->ctl);

            if (p->opcode == NGX_HTTP_COLLAB_WS_OP_CLOSE) {
                FUZZ_CHECK(fuzz_close_check(p->data, p->len) == 0);
            }

            t->hash = fuzz_hash(t->hash, p->data, p->len);
            break;

        case NGX_HTTP_COLLAB_WS_ERROR:
            code = p->close_code;

            FUZZ_CHECK(code == 1002 || code == 1007 || code == 1009);
            FUZZ_CHECK(p->error != NULL);
            FUZZ_CHECK(code != 1009 || r->max != (uint64_t) -1);

            /* dead for good: with the rest of the read and with nothing */

            prev = pos;
            rc2 = ngx_http_collab_ws_parse(p, &pos, last);
            FUZZ_CHECK(rc2 == NGX_HTTP_COLLAB_WS_ERROR && pos == prev);
            FUZZ_CHECK(p->close_code == code);

            rc2 = ngx_http_collab_ws_parse(p, &pos, pos);
            FUZZ_CHECK(rc2 == NGX_HTTP_COLLAB_WS_ERROR);

            t->error = code;
            t->hash = fuzz_hash_u(t->hash, code);
            t->events++;
            return 1;

        default:
            FUZZ_CHECK(rc >= NGX_HTTP_COLLAB_WS_AGAIN
                       && rc <= NGX_HTTP_COLLAB_WS_ERROR);
        }

        /* chunking decides MSG_DATA boundaries; they are not compared */

        if (rc != NGX_HTTP_COLLAB_WS_MSG_DATA) {
            t->hash = fuzz_hash_u(t->hash, rc);
            t->hash = fuzz_hash_u(t->hash, p->opcode);

            if (rc == NGX_HTTP_COLLAB_WS_MSG_END) {
                t->hash = fuzz_hash_u(t->hash, r->hash);
                t->hash = fuzz_hash_u(t->hash, r->len);
            }

            t->events++;
        }
    }
}


static void
fuzz_run(const unsigned char *in, size_t len, uint64_t max, uint32_t seed,
    fuzz_transcript_t *t)
{
    size_t                        off, n;
    fuzz_run_t                    r;
    unsigned char                *chunk;
    ngx_http_collab_ws_parser_t   p;

    memset(&r, 0, sizeof(fuzz_run_t));
    memset(t, 0, sizeof(fuzz_transcript_t));

    r.rnd = seed;
    r.max = max;
    r.msg = malloc(len ? len : 1);
    FUZZ_CHECK(r.msg != NULL);

    t->hash = 14695981039346656037ULL;

    ngx_http_collab_ws_parser_init(&p, max);

    for (off = 0; off < len; off += n) {
        n = seed ? fuzz_chunk(&r, len - off) : len - off;

        chunk = malloc(n);
        FUZZ_CHECK(chunk != NULL);
        memcpy(chunk, in + off, n);

        if (fuzz_read(&r, &p, chunk, chunk + n, t)) {
            free(chunk);
            break;
        }

        free(chunk);
    }

    free(r.msg);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t           seed;
    uint64_t           max;
    fuzz_transcript_t  split, whole;

    /* the validators against the reference, on the raw input */

    FUZZ_CHECK(ngx_http_collab_utf8_valid(data, size) == fuzz_utf8(data,
                                                                   size));
    FUZZ_CHECK(ngx_http_collab_ws_close_check(data, size)
               == fuzz_close_check(data, size));

    if (size < 3) {
        return 0;
    }

    seed = ((uint32_t) data[0] << 8 | data[1]) * 2654435761u | 1;
    max = fuzz_max[data[2] & 7];

    data += 3;
    size -= 3;

    fuzz_run(data, size, max, seed, &split);
    fuzz_run(data, size, max, 0, &whole);

    FUZZ_CHECK(split.hash == whole.hash);
    FUZZ_CHECK(split.events == whole.events);
    FUZZ_CHECK(split.error == whole.error);

    return 0;
}
