
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <string.h>

#include "ngx_http_collab_wsparse.h"


#define NGX_HTTP_COLLAB_WS_ST_HEADER   0
#define NGX_HTTP_COLLAB_WS_ST_PAYLOAD  1
#define NGX_HTTP_COLLAB_WS_ST_DEAD     2

/* internal: a step finished without an event, keep going */
#define NGX_HTTP_COLLAB_WS_NEXT        (-1)

#define NGX_HTTP_COLLAB_WS_CONTROL_BIT 0x8

#define NGX_HTTP_COLLAB_UTF8_ACCEPT    0
#define NGX_HTTP_COLLAB_UTF8_REJECT    1
#define NGX_HTTP_COLLAB_UTF8_CLASSES   12


static int ngx_http_collab_ws_header_byte(ngx_http_collab_ws_parser_t *p);
static int ngx_http_collab_ws_length(ngx_http_collab_ws_parser_t *p,
    uint64_t len);
static int ngx_http_collab_ws_header_done(ngx_http_collab_ws_parser_t *p);
static int ngx_http_collab_ws_payload(ngx_http_collab_ws_parser_t *p,
    unsigned char **pos, unsigned char *last);
static void ngx_http_collab_ws_unmask(ngx_http_collab_ws_parser_t *p,
    unsigned char *b, size_t n);
static int ngx_http_collab_ws_fail(ngx_http_collab_ws_parser_t *p,
    unsigned code, const char *error);
static uint32_t ngx_http_collab_utf8_run(uint32_t state,
    const unsigned char *p, size_t len);


/*
 * UTF-8 DFA after the well-formed byte sequences table of Unicode 3.9
 * (table 3-7).  Byte classes separate the continuation ranges that the
 * second byte of E0, ED, F0 and F4 sequences is restricted to, so overlong
 * forms, surrogates and code points above U+10FFFF are rejected at the
 * first byte that makes them so ("fail fast").
 */

static const unsigned char  ngx_http_collab_utf8_class[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 00 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 10 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 20 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 30 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 40 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 50 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 60 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 70 */
     1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  /* 80 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 90 */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* A0 */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* B0 */
     4,  4,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  /* C0 */
     5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  5,  /* D0 */
     6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  7,  /* E0 */
     9, 10, 10, 10, 11,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4   /* F0 */
};


/*
 * states: 0 accept, 1 reject, 2-4 expect 1-3 continuation bytes in 80..BF,
 * 5 after E0 (A0..BF), 6 after ED (80..9F), 7 after F0 (90..BF),
 * 8 after F4 (80..8F)
 */

static const unsigned char  ngx_http_collab_utf8_trans[9 * 12] = {
 /*  00  80  90  A0  bad C2  E0  E1  ED  F0  F1  F4 */
     0,  1,  1,  1,  1,  2,  5,  3,  6,  7,  4,  8,    /* accept */
     1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,    /* reject */
     1,  0,  0,  0,  1,  1,  1,  1,  1,  1,  1,  1,    /* 1 more */
     1,  2,  2,  2,  1,  1,  1,  1,  1,  1,  1,  1,    /* 2 more */
     1,  3,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,    /* 3 more */
     1,  1,  1,  2,  1,  1,  1,  1,  1,  1,  1,  1,    /* E0 */
     1,  2,  2,  1,  1,  1,  1,  1,  1,  1,  1,  1,    /* ED */
     1,  1,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,    /* F0 */
     1,  3,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1     /* F4 */
};


void
ngx_http_collab_ws_parser_init(ngx_http_collab_ws_parser_t *p,
    uint64_t max_message)
{
    memset(p, 0, sizeof(ngx_http_collab_ws_parser_t));

    p->max_message = max_message;
    p->state = NGX_HTTP_COLLAB_WS_ST_HEADER;
    p->hdr_need = 2;
    p->utf8_state = NGX_HTTP_COLLAB_UTF8_ACCEPT;
}


int
ngx_http_collab_ws_parse(ngx_http_collab_ws_parser_t *p,
    unsigned char **pos, unsigned char *last)
{
    int  rc;

    for ( ;; ) {

        switch (p->state) {

        case NGX_HTTP_COLLAB_WS_ST_HEADER:

            /*
             * the header goes through p->hdr byte by byte: it is at most
             * 14 bytes and may be split anywhere, and checking each byte
             * as it arrives lets a bad frame fail before the rest of it
             */

            while (p->hdr_len < p->hdr_need) {

                if (*pos == last) {
                    return NGX_HTTP_COLLAB_WS_AGAIN;
                }

                p->hdr[p->hdr_len++] = *(*pos)++;

                rc = ngx_http_collab_ws_header_byte(p);
                if (rc != NGX_HTTP_COLLAB_WS_NEXT) {
                    return rc;
                }
            }

            rc = ngx_http_collab_ws_header_done(p);
            break;

        case NGX_HTTP_COLLAB_WS_ST_PAYLOAD:
            rc = ngx_http_collab_ws_payload(p, pos, last);
            break;

        default: /* NGX_HTTP_COLLAB_WS_ST_DEAD */
            p->data = NULL;
            p->len = 0;
            return NGX_HTTP_COLLAB_WS_ERROR;
        }

        if (rc != NGX_HTTP_COLLAB_WS_NEXT) {
            return rc;
        }
    }
}


static int
ngx_http_collab_ws_header_byte(ngx_http_collab_ws_parser_t *p)
{
    unsigned       n, i, ext, op;
    uint64_t       len;
    unsigned char  b;

    n = p->hdr_len;
    b = p->hdr[n - 1];

    if (n == 1) {
        if (b & 0x70) {
            return ngx_http_collab_ws_fail(p, 1002, "reserved bits set");
        }

        op = b & 0x0f;

        switch (op) {

        case NGX_HTTP_COLLAB_WS_OP_CONT:
            if (!p->in_message) {
                return ngx_http_collab_ws_fail(p, 1002,
                                    "continuation frame without a message");
            }
            break;

        case NGX_HTTP_COLLAB_WS_OP_TEXT:
        case NGX_HTTP_COLLAB_WS_OP_BINARY:
            if (p->in_message) {
                return ngx_http_collab_ws_fail(p, 1002,
                                    "new message inside a fragmented message");
            }
            break;

        case NGX_HTTP_COLLAB_WS_OP_CLOSE:
        case NGX_HTTP_COLLAB_WS_OP_PING:
        case NGX_HTTP_COLLAB_WS_OP_PONG:
            if (!(b & 0x80)) {
                return ngx_http_collab_ws_fail(p, 1002,
                                               "fragmented control frame");
            }
            break;

        default:
            return ngx_http_collab_ws_fail(p, 1002, "reserved opcode");
        }

        p->frame_opcode = op;
        p->fin = (b & 0x80) ? 1 : 0;

        return NGX_HTTP_COLLAB_WS_NEXT;
    }

    if (n == 2) {
        if (!(b & 0x80)) {
            return ngx_http_collab_ws_fail(p, 1002, "unmasked client frame");
        }

        len = b & 0x7f;

        if ((p->frame_opcode & NGX_HTTP_COLLAB_WS_CONTROL_BIT) && len > 125) {
            return ngx_http_collab_ws_fail(p, 1002, "control frame too long");
        }

        ext = (len == 126) ? 2 : (len == 127) ? 8 : 0;

        p->hdr_need = 2 + ext + 4;

        if (ext == 0) {
            return ngx_http_collab_ws_length(p, len);
        }

        return NGX_HTTP_COLLAB_WS_NEXT;
    }

    ext = p->hdr_need - 6;

    if (n == 3 && ext == 8 && (b & 0x80)) {
        return ngx_http_collab_ws_fail(p, 1002,
                                       "frame length with the high bit set");
    }

    if (n == 2 + ext) {
        len = 0;

        for (i = 2; i < n; i++) {
            len = (len << 8) | p->hdr[i];
        }

        /* non-minimal length encodings are accepted, as most servers do */

        return ngx_http_collab_ws_length(p, len);
    }

    return NGX_HTTP_COLLAB_WS_NEXT;
}


static int
ngx_http_collab_ws_length(ngx_http_collab_ws_parser_t *p, uint64_t len)
{
    p->remaining = len;

    /*
     * msg_len is 0 for the first frame of a message and never exceeds
     * max_message, so the subtraction cannot wrap; checking here refuses
     * a huge message before any of its payload is read
     */

    if (!(p->frame_opcode & NGX_HTTP_COLLAB_WS_CONTROL_BIT)
        && len > p->max_message - p->msg_len)
    {
        return ngx_http_collab_ws_fail(p, 1009, "message too big");
    }

    return NGX_HTTP_COLLAB_WS_NEXT;
}


static int
ngx_http_collab_ws_header_done(ngx_http_collab_ws_parser_t *p)
{
    memcpy(p->mask, &p->hdr[p->hdr_need - 4], 4);

    p->mask_pos = 0;
    p->hdr_len = 0;
    p->hdr_need = 2;
    p->frame_done = 0;
    p->state = NGX_HTTP_COLLAB_WS_ST_PAYLOAD;

    if (p->frame_opcode & NGX_HTTP_COLLAB_WS_CONTROL_BIT) {
        p->ctl_len = 0;
        return NGX_HTTP_COLLAB_WS_NEXT;
    }

    if (p->frame_opcode == NGX_HTTP_COLLAB_WS_OP_CONT) {
        return NGX_HTTP_COLLAB_WS_NEXT;
    }

    p->in_message = 1;
    p->msg_started = 1;
    p->msg_opcode = p->frame_opcode;
    p->msg_len = 0;
    p->utf8_state = NGX_HTTP_COLLAB_UTF8_ACCEPT;

    p->opcode = p->msg_opcode;
    p->data = NULL;
    p->len = 0;

    return NGX_HTTP_COLLAB_WS_MSG_START;
}


static int
ngx_http_collab_ws_payload(ngx_http_collab_ws_parser_t *p,
    unsigned char **pos, unsigned char *last)
{
    size_t          n;
    unsigned        code;
    unsigned char  *start;

    n = (size_t) (last - *pos);

    if (p->remaining < n) {
        n = (size_t) p->remaining;
    }

    if (p->frame_opcode & NGX_HTTP_COLLAB_WS_CONTROL_BIT) {

        /* copied: a control frame split across reads must be whole */

        if (n) {
            memcpy(&p->ctl[p->ctl_len], *pos, n);
            ngx_http_collab_ws_unmask(p, &p->ctl[p->ctl_len], n);

            p->ctl_len += n;
            p->remaining -= n;
            *pos += n;
        }

        if (p->remaining) {
            return NGX_HTTP_COLLAB_WS_AGAIN;
        }

        p->state = NGX_HTTP_COLLAB_WS_ST_HEADER;

        if (p->frame_opcode == NGX_HTTP_COLLAB_WS_OP_CLOSE) {
            code = ngx_http_collab_ws_close_check(p->ctl, p->ctl_len);
            if (code) {
                return ngx_http_collab_ws_fail(p, code,
                                               "invalid close frame payload");
            }
        }

        p->opcode = p->frame_opcode;
        p->data = p->ctl;
        p->len = p->ctl_len;

        return NGX_HTTP_COLLAB_WS_CONTROL;
    }

    if (p->remaining == 0) {
        p->frame_done = 1;
        p->state = NGX_HTTP_COLLAB_WS_ST_HEADER;

        if (!p->fin) {
            return NGX_HTTP_COLLAB_WS_NEXT;
        }

        if (p->msg_opcode == NGX_HTTP_COLLAB_WS_OP_TEXT
            && p->utf8_state != NGX_HTTP_COLLAB_UTF8_ACCEPT)
        {
            return ngx_http_collab_ws_fail(p, 1007,
                                           "truncated UTF-8 in text message");
        }

        p->in_message = 0;
        p->msg_started = 0;
        p->msg_len = 0;

        p->opcode = p->msg_opcode;
        p->data = NULL;
        p->len = 0;

        return NGX_HTTP_COLLAB_WS_MSG_END;
    }

    if (n == 0) {
        return NGX_HTTP_COLLAB_WS_AGAIN;
    }

    start = *pos;

    ngx_http_collab_ws_unmask(p, start, n);

    *pos += n;
    p->remaining -= n;
    p->msg_len += n;

    if (p->msg_opcode == NGX_HTTP_COLLAB_WS_OP_TEXT) {
        p->utf8_state = ngx_http_collab_utf8_run(p->utf8_state, start, n);

        if (p->utf8_state == NGX_HTTP_COLLAB_UTF8_REJECT) {
            return ngx_http_collab_ws_fail(p, 1007,
                                           "invalid UTF-8 in text message");
        }
    }

    p->opcode = p->msg_opcode;
    p->data = start;
    p->len = n;

    return NGX_HTTP_COLLAB_WS_MSG_DATA;
}


static void
ngx_http_collab_ws_unmask(ngx_http_collab_ws_parser_t *p, unsigned char *b,
    size_t n)
{
    size_t    i;
    unsigned  m;

    m = p->mask_pos;

    for (i = 0; i < n; i++) {
        b[i] ^= p->mask[m];
        m = (m + 1) & 3;
    }

    p->mask_pos = m;
}


static int
ngx_http_collab_ws_fail(ngx_http_collab_ws_parser_t *p, unsigned code,
    const char *error)
{
    p->state = NGX_HTTP_COLLAB_WS_ST_DEAD;
    p->close_code = code;
    p->error = error;
    p->data = NULL;
    p->len = 0;

    return NGX_HTTP_COLLAB_WS_ERROR;
}


static uint32_t
ngx_http_collab_utf8_run(uint32_t state, const unsigned char *p, size_t len)
{
    uint64_t              w;
    const unsigned char  *last;

    last = p + len;

    while (p < last) {

        if (state == NGX_HTTP_COLLAB_UTF8_ACCEPT) {

            /* JSON text is mostly ASCII: skip it a word at a time */

            while (last - p >= 8) {
                memcpy(&w, p, 8);

                if (w & 0x8080808080808080ULL) {
                    break;
                }

                p += 8;
            }

            if (p == last) {
                break;
            }
        }

        state = ngx_http_collab_utf8_trans[state * NGX_HTTP_COLLAB_UTF8_CLASSES
                                       + ngx_http_collab_utf8_class[*p++]];

        if (state == NGX_HTTP_COLLAB_UTF8_REJECT) {
            break;
        }
    }

    return state;
}


int
ngx_http_collab_utf8_valid(const unsigned char *p, size_t len)
{
    return ngx_http_collab_utf8_run(NGX_HTTP_COLLAB_UTF8_ACCEPT, p, len)
           == NGX_HTTP_COLLAB_UTF8_ACCEPT;
}


unsigned
ngx_http_collab_ws_close_check(const unsigned char *p, size_t len)
{
    unsigned  code;

    if (len == 0) {
        return 0;
    }

    if (len == 1) {
        return 1002;
    }

    code = ((unsigned) p[0] << 8) | p[1];

    /* 1004-1006 and 1015 are reserved, never sent on the wire */

    if (!((code >= 1000 && code <= 1003)
          || (code >= 1007 && code <= 1014)
          || (code >= 3000 && code <= 4999)))
    {
        return 1002;
    }

    if (!ngx_http_collab_utf8_valid(p + 2, len - 2)) {
        return 1007;
    }

    return 0;
}
