
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * Unit tests of the RFC 6455 client frame parser; TAP output.
 *
 * Every input is run as a whole, byte by byte and (when small) split at
 * every offset; the normalized event transcript must be the same in all
 * runs and equal to the expected one.  A transcript is a string of events:
 *
 *   S<op>            MSG_START
 *   E<op>[payload]   MSG_END, with the reassembled payload (short messages)
 *   E<op>#len:hash   MSG_END of a long message
 *   C<op>[payload]   CONTROL
 *   X<code>          ERROR
 *
 * MSG_DATA chunks depend on the split and are merged into the message.
 */


#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_collab_wsparse.h"


#define FIN     0x80
#define RSV1    0x40
#define RSV2    0x20
#define RSV3    0x10
#define TEXT    NGX_HTTP_COLLAB_WS_OP_TEXT
#define BINARY  NGX_HTTP_COLLAB_WS_OP_BINARY
#define CONT    NGX_HTTP_COLLAB_WS_OP_CONT
#define CLOSE   NGX_HTTP_COLLAB_WS_OP_CLOSE
#define PING    NGX_HTTP_COLLAB_WS_OP_PING
#define PONG    NGX_HTTP_COLLAB_WS_OP_PONG

#define LEN_AUTO  0
#define LEN_7     7
#define LEN_16    16
#define LEN_64    64

#define UNMASKED  0
#define MASKED    1

#define NO_MAX    ((uint64_t) -1)


typedef struct {
    char          *s;
    size_t         len;
    size_t         size;
} str_t;


typedef struct {
    unsigned char *data;
    size_t         len;
    size_t         size;
} buf_t;


static int  test_no;
static int  test_failed;


static void
ok(int cond, const char *fmt, ...)
{
    va_list  ap;

    test_no++;

    if (!cond) {
        test_failed++;
    }

    printf("%sok %d - ", cond ? "" : "not ", test_no);

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);

    printf("\n");
    fflush(stdout);
}


static void
diag(const char *fmt, ...)
{
    va_list  ap;

    printf("# ");

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);

    printf("\n");
}


static void *
xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);

    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }

    return p;
}


static void
buf_add(buf_t *b, const void *data, size_t len)
{
    if (b->len + len > b->size) {
        b->size = (b->len + len) * 2 + 64;
        b->data = xrealloc(b->data, b->size);
    }

    if (len) {
        memcpy(b->data + b->len, data, len);
    }

    b->len += len;
}


static void
str_add(str_t *s, const char *fmt, ...)
{
    int      n;
    va_list  ap;

    for ( ;; ) {
        va_start(ap, fmt);
        n = vsnprintf(s->s + s->len, s->size - s->len, fmt, ap);
        va_end(ap);

        if (n >= 0 && s->len + (size_t) n < s->size) {
            s->len += n;
            return;
        }

        s->size = (s->size + n + 1) * 2 + 64;
        s->s = xrealloc(s->s, s->size);
    }
}


static void
str_init(str_t *s)
{
    s->size = 256;
    s->len = 0;
    s->s = xrealloc(NULL, s->size);
    s->s[0] = '\0';
}


static void
str_escaped(str_t *s, const unsigned char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\' && p[i] != ']') {
            str_add(s, "%c", p[i]);

        } else {
            str_add(s, "\\x%02x", p[i]);
        }
    }
}


static uint32_t
fnv1a(const unsigned char *p, size_t len)
{
    size_t    i;
    uint32_t  h;

    h = 2166136261u;

    for (i = 0; i < len; i++) {
        h = (h ^ p[i]) * 16777619u;
    }

    return h;
}


/* appends a client frame to b */

static void
frame(buf_t *b, unsigned b0, int masked, int lenform, const void *payload,
    size_t len)
{
    size_t               i;
    unsigned char        h[14], *m;
    const unsigned char *src;
    static unsigned      salt;
    unsigned char        key[4];

    h[0] = (unsigned char) b0;
    i = 2;

    if (lenform == LEN_AUTO) {
        lenform = (len < 126) ? LEN_7 : (len < 65536) ? LEN_16 : LEN_64;
    }

    if (lenform == LEN_7) {
        h[1] = (unsigned char) len;

    } else if (lenform == LEN_16) {
        h[1] = 126;
        h[i++] = (unsigned char) (len >> 8);
        h[i++] = (unsigned char) len;

    } else {
        h[1] = 127;
        h[i++] = (unsigned char) ((uint64_t) len >> 56);
        h[i++] = (unsigned char) ((uint64_t) len >> 48);
        h[i++] = (unsigned char) ((uint64_t) len >> 40);
        h[i++] = (unsigned char) ((uint64_t) len >> 32);
        h[i++] = (unsigned char) (len >> 24);
        h[i++] = (unsigned char) (len >> 16);
        h[i++] = (unsigned char) (len >> 8);
        h[i++] = (unsigned char) len;
    }

    /* a different mask for every frame, never all zero */
    salt++;
    key[0] = (unsigned char) (0x37 + salt);
    key[1] = (unsigned char) (0xfa ^ salt);
    key[2] = 0x21;
    key[3] = (unsigned char) (0x3d + 7 * salt);

    if (masked) {
        h[1] |= 0x80;
        memcpy(&h[i], key, 4);
        i += 4;
    }

    buf_add(b, h, i);

    src = payload;
    buf_add(b, src, len);

    if (masked) {
        m = b->data + b->len - len;

        for (i = 0; i < len; i++) {
            m[i] ^= key[i & 3];
        }
    }
}


static void
frame_str(buf_t *b, unsigned b0, const char *s)
{
    frame(b, b0, MASKED, LEN_AUTO, s, strlen(s));
}


/*
 * Runs the parser over a private copy of in, cut at the sorted offsets in
 * cuts[], and returns the transcript.  Contract violations are recorded in
 * the transcript as "!..." so that they fail the comparison.
 */

static char *
run_cuts(const unsigned char *in, size_t len, uint64_t max,
    const size_t *cuts, size_t ncuts)
{
    int                           rc, rc2;
    str_t                         t;
    buf_t                         msg;
    size_t                        k, a, b;
    unsigned                      code;
    unsigned char                *copy, *pos, *chunk, *prev;
    ngx_http_collab_ws_parser_t   p;

    str_init(&t);
    memset(&msg, 0, sizeof(buf_t));

    copy = xrealloc(NULL, len);
    if (len) {
        memcpy(copy, in, len);
    }

    ngx_http_collab_ws_parser_init(&p, max);

    a = 0;

    for (k = 0; k <= ncuts; k++) {
        b = (k < ncuts) ? cuts[k] : len;

        if (b < a) {
            b = a;
        }

        chunk = copy + a;
        pos = chunk;

        for ( ;; ) {
            prev = pos;
            rc = ngx_http_collab_ws_parse(&p, &pos, copy + b);

            if (pos < prev || pos > copy + b) {
                str_add(&t, "!pos ");
                goto done;
            }

            switch (rc) {

            case NGX_HTTP_COLLAB_WS_AGAIN:
                if (pos != copy + b) {
                    str_add(&t, "!again-with-input ");
                }
                break;

            case NGX_HTTP_COLLAB_WS_MSG_START:
                str_add(&t, "S%u ", p.opcode);
                msg.len = 0;
                break;

            case NGX_HTTP_COLLAB_WS_MSG_DATA:
                if (p.len == 0) {
                    str_add(&t, "!empty-data ");
                }

                if (p.data < chunk || p.data + p.len > pos) {
                    str_add(&t, "!data-bounds ");
                    goto done;
                }

                buf_add(&msg, p.data, p.len);

                if (msg.len > max) {
                    str_add(&t, "!over-max ");
                }
                break;

            case NGX_HTTP_COLLAB_WS_MSG_END:
                str_add(&t, "E%u", p.opcode);

                if (msg.len <= 64) {
                    str_add(&t, "[");
                    str_escaped(&t, msg.data, msg.len);
                    str_add(&t, "] ");

                } else {
                    str_add(&t, "#%zu:%08x ", msg.len,
                            fnv1a(msg.data, msg.len));
                }
                break;

            case NGX_HTTP_COLLAB_WS_CONTROL:
                str_add(&t, "C%u[", p.opcode);
                str_escaped(&t, p.data, p.len);
                str_add(&t, "] ");

                if (p.len > 125) {
                    str_add(&t, "!ctl-len ");
                }
                break;

            case NGX_HTTP_COLLAB_WS_ERROR:
                str_add(&t, "X%u", p.close_code);

                if (p.error == NULL) {
                    str_add(&t, "!no-error-text");
                }

                /* the parser must stay dead, with or without input */

                code = p.close_code;
                prev = pos;

                rc2 = ngx_http_collab_ws_parse(&p, &pos, copy + len);
                if (rc2 != NGX_HTTP_COLLAB_WS_ERROR || p.close_code != code
                    || pos != prev)
                {
                    str_add(&t, "!revived");
                }

                rc2 = ngx_http_collab_ws_parse(&p, &pos, pos);
                if (rc2 != NGX_HTTP_COLLAB_WS_ERROR) {
                    str_add(&t, "!revived-empty");
                }

                goto done;

            default:
                str_add(&t, "!event-%d ", rc);
                goto done;
            }

            if (rc == NGX_HTTP_COLLAB_WS_AGAIN) {
                break;
            }
        }

        a = b;
    }

done:

    /* trailing blanks are noise in expectations */
    while (t.len && t.s[t.len - 1] == ' ') {
        t.s[--t.len] = '\0';
    }

    free(copy);
    free(msg.data);

    return t.s;
}


static char *
run_step(const unsigned char *in, size_t len, uint64_t max, size_t step)
{
    char    *t;
    size_t   i, n, *cuts;

    cuts = xrealloc(NULL, (len / step + 1) * sizeof(size_t));
    n = 0;

    for (i = step; i < len; i += step) {
        cuts[n++] = i;
    }

    t = run_cuts(in, len, max, cuts, n);
    free(cuts);

    return t;
}


/*
 * The expected transcript must come out of the whole input, byte by byte,
 * in 3-byte steps and split at every offset (every offset near the start
 * and end of long inputs).
 */

static int
check_quiet(const unsigned char *in, size_t len, uint64_t max,
    const char *expect, const char *name)
{
    int      good;
    char    *t;
    size_t   cut, cuts[2], i, j;

    good = 1;

    t = run_cuts(in, len, max, NULL, 0);
    if (strcmp(t, expect) != 0) {
        diag("%s: whole input", name);
        diag("  got:    %.400s", t);
        diag("  expect: %.400s", expect);
        good = 0;
    }
    free(t);

    t = run_step(in, len, max, 1);
    if (strcmp(t, expect) != 0) {
        diag("%s: byte by byte: got %.400s", name, t);
        good = 0;
    }
    free(t);

    t = run_step(in, len, max, 3);
    if (strcmp(t, expect) != 0) {
        diag("%s: 3-byte steps: got %.400s", name, t);
        good = 0;
    }
    free(t);

    for (cut = 0; cut <= len && good; cut++) {
        if (len > 4096 && cut > 64 && cut < len - 64 && cut % 4093 != 0) {
            continue;
        }

        t = run_cuts(in, len, max, &cut, 1);
        if (strcmp(t, expect) != 0) {
            diag("%s: split at %zu: got %.400s", name, cut, t);
            good = 0;
        }
        free(t);
    }

    /* every pair of split points for small inputs */

    for (i = 1; i < len && len <= 96 && good; i++) {
        for (j = i + 1; j < len && good; j++) {
            cuts[0] = i;
            cuts[1] = j;

            t = run_cuts(in, len, max, cuts, 2);
            if (strcmp(t, expect) != 0) {
                diag("%s: split at %zu,%zu: got %.400s", name, i, j, t);
                good = 0;
            }
            free(t);
        }
    }

    return good;
}


static void
check(const buf_t *b, uint64_t max, const char *expect, const char *name)
{
    ok(check_quiet(b->data, b->len, max, expect, name), "%s", name);
}


static void
buf_reset(buf_t *b)
{
    b->len = 0;
}


/* ---- frame level protocol errors ---- */

static void
test_protocol_errors(void)
{
    int       good;
    char      name[64];
    buf_t     b;
    unsigned  op, i, rsv[3] = { RSV1, RSV2, RSV3 };

    memset(&b, 0, sizeof(buf_t));

    frame_str(&b, FIN | TEXT, "Hello");
    check(&b, NO_MAX, "S1 E1[Hello]", "single masked text frame");

    buf_reset(&b);
    frame(&b, FIN | TEXT, UNMASKED, LEN_AUTO, "Hello", 5);
    check(&b, NO_MAX, "X1002", "unmasked text frame => 1002");

    buf_reset(&b);
    frame(&b, FIN | PING, UNMASKED, LEN_AUTO, "", 0);
    check(&b, NO_MAX, "X1002", "unmasked empty ping => 1002");

    buf_reset(&b);
    frame_str(&b, FIN | TEXT, "ok");
    frame(&b, FIN | BINARY, UNMASKED, LEN_AUTO, "x", 1);
    check(&b, NO_MAX, "S1 E1[ok] X1002",
          "unmasked frame after a good one => 1002");

    for (i = 0; i < 3; i++) {
        buf_reset(&b);
        frame_str(&b, FIN | rsv[i] | TEXT, "Hello");
        snprintf(name, sizeof(name), "RSV%u set => 1002", i + 1);
        check(&b, NO_MAX, "X1002", name);
    }

    buf_reset(&b);
    frame_str(&b, FIN | RSV1 | PING, "");
    check(&b, NO_MAX, "X1002", "RSV1 on a ping => 1002");

    good = 1;

    for (op = 3; op <= 0xf; op++) {
        if (op >= 8 && op <= 0xa) {
            continue;
        }

        buf_reset(&b);
        frame_str(&b, FIN | op, "");
        snprintf(name, sizeof(name), "opcode 0x%x", op);
        good &= check_quiet(b.data, b.len, NO_MAX, "X1002", name);

        buf_reset(&b);
        frame_str(&b, FIN | op, "payload");
        good &= check_quiet(b.data, b.len, NO_MAX, "X1002", name);

        /* reserved opcode in the middle of a fragmented message */
        buf_reset(&b);
        frame_str(&b, TEXT, "frag");
        frame_str(&b, FIN | op, "");
        good &= check_quiet(b.data, b.len, NO_MAX, "S1 X1002", name);
    }

    ok(good, "reserved opcodes 3-7 and 0xB-0xF => 1002");

    buf_reset(&b);
    frame_str(&b, PING, "no fin");
    check(&b, NO_MAX, "X1002", "ping with FIN=0 => 1002");

    buf_reset(&b);
    frame_str(&b, CLOSE, "");
    check(&b, NO_MAX, "X1002", "close with FIN=0 => 1002");

    buf_reset(&b);
    frame_str(&b, PONG, "");
    check(&b, NO_MAX, "X1002", "pong with FIN=0 => 1002");

    {
        char  big[127], expect[160];

        memset(big, 'p', sizeof(big) - 1);
        big[126] = '\0';

        buf_reset(&b);
        frame(&b, FIN | PING, MASKED, LEN_AUTO, big, 126);
        check(&b, NO_MAX, "X1002", "ping with 126 bytes => 1002");

        buf_reset(&b);
        frame(&b, FIN | PING, MASKED, LEN_16, big, 125);
        check(&b, NO_MAX, "X1002",
              "ping with a 16-bit length field => 1002");

        buf_reset(&b);
        frame(&b, FIN | PING, MASKED, LEN_AUTO, big, 125);
        snprintf(expect, sizeof(expect), "C9[%.125s]", big);
        check(&b, NO_MAX, expect, "ping with 125 bytes is fine");

        buf_reset(&b);
        frame(&b, FIN | PONG, MASKED, LEN_AUTO, big, 126);
        check(&b, NO_MAX, "X1002", "pong with 126 bytes => 1002");

        buf_reset(&b);
        frame(&b, FIN | CLOSE, MASKED, LEN_64, big, 126);
        check(&b, NO_MAX, "X1002", "close with 126 bytes => 1002");
    }

    buf_reset(&b);
    frame_str(&b, FIN | CONT, "orphan");
    check(&b, NO_MAX, "X1002", "continuation without a message => 1002");

    buf_reset(&b);
    frame_str(&b, CONT, "orphan");
    check(&b, NO_MAX, "X1002",
          "non-final continuation without a message => 1002");

    buf_reset(&b);
    frame_str(&b, FIN | TEXT, "done");
    frame_str(&b, FIN | CONT, "late");
    check(&b, NO_MAX, "S1 E1[done] X1002",
          "continuation after a complete message => 1002");

    buf_reset(&b);
    frame_str(&b, TEXT, "frag");
    frame_str(&b, FIN | TEXT, "new");
    check(&b, NO_MAX, "S1 X1002",
          "text frame inside a fragmented message => 1002");

    buf_reset(&b);
    frame_str(&b, BINARY, "frag");
    frame_str(&b, CONT, "ment");
    frame_str(&b, BINARY, "new");
    check(&b, NO_MAX, "S2 X1002",
          "binary frame inside a fragmented message => 1002");

    /* 64-bit length with the most significant bit: fails on that byte */
    {
        static unsigned char  hdr[] = {
            0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4
        };

        ok(check_quiet(hdr, sizeof(hdr), NO_MAX, "X1002", "msb")
           && check_quiet(hdr, 3, NO_MAX, "X1002", "msb 3 bytes"),
           "64-bit length with the MSB set => 1002 at that byte");

        hdr[2] = 0x7f;
        ok(check_quiet(hdr, sizeof(hdr), NO_MAX, "S2", "huge"),
           "64-bit length 0x7f00000000000001 without a limit is accepted");

        ok(check_quiet(hdr, 10, 1 << 20, "X1009", "huge limited"),
           "64-bit length 0x7f00000000000001 with a limit => 1009 "
           "before the mask");
    }

    free(b.data);
}


/* ---- fragmentation, control frames, lengths ---- */

static void
test_messages(void)
{
    size_t          i;
    buf_t           b, big;
    char            expect[256];
    unsigned char  *payload;

    memset(&b, 0, sizeof(buf_t));
    memset(&big, 0, sizeof(buf_t));

    frame_str(&b, TEXT, "Hel");
    frame_str(&b, FIN | PING, "p");
    frame_str(&b, CONT, "lo");
    frame_str(&b, FIN | PONG, "");
    frame_str(&b, CONT, "");
    frame_str(&b, FIN | CONT, " world");
    frame_str(&b, FIN | CLOSE, "\x03\xe8" "bye");
    check(&b, NO_MAX, "S1 C9[p] C10[] E1[Hello world] C8[\\x03\\xe8bye]",
          "fragmented text with interleaved ping and pong");

    buf_reset(&b);
    frame_str(&b, FIN | TEXT, "");
    check(&b, NO_MAX, "S1 E1[]", "empty text message");

    buf_reset(&b);
    frame_str(&b, FIN | BINARY, "");
    frame_str(&b, FIN | BINARY, "");
    check(&b, NO_MAX, "S2 E2[] S2 E2[]", "two empty binary messages");

    buf_reset(&b);
    frame_str(&b, TEXT, "");
    frame_str(&b, CONT, "");
    frame_str(&b, FIN | CONT, "");
    check(&b, NO_MAX, "S1 E1[]", "empty fragmented message");

    buf_reset(&b);
    frame_str(&b, FIN | PING, "");
    frame_str(&b, FIN | CLOSE, "");
    check(&b, NO_MAX, "C9[] C8[]", "empty ping and empty close");

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, "\xff\x00\xc0\x80", 4);
    check(&b, NO_MAX, "S2 E2[\\xff\\x00\\xc0\\x80]",
          "binary message is not UTF-8 checked");

    /* a multi-frame input covering every state, split everywhere */

    payload = xrealloc(NULL, 70000);
    for (i = 0; i < 70000; i++) {
        payload[i] = (unsigned char) ('a' + i % 26);
    }

    buf_reset(&b);
    frame_str(&b, FIN | TEXT, "first");
    frame_str(&b, BINARY, "ab");
    frame_str(&b, FIN | PING, "ping!");
    frame(&b, CONT, MASKED, LEN_16, "cd", 2);
    frame(&b, CONT, MASKED, LEN_64, "", 0);
    frame_str(&b, FIN | PONG, "");
    frame(&b, FIN | CONT, MASKED, LEN_64, "ef", 2);
    frame_str(&b, FIN | TEXT, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5");
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 200);
    frame_str(&b, FIN | CLOSE, "\x03\xe8" "done");

    snprintf(expect, sizeof(expect),
             "S1 E1[first] S2 C9[ping!] C10[] E2[abcdef] "
             "S1 E1[\\xce\\xba\\xe1\\xbd\\xb9\\xcf\\x83\\xce\\xbc\\xce\\xb5] "
             "S1 E1#200:%08x C8[\\x03\\xe8done]", fnv1a(payload, 200));
    check(&b, NO_MAX, expect,
          "multi-frame input: same events at every split point");

    /* length encodings */

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_7, payload, 125);
    snprintf(expect, sizeof(expect), "S2 E2#125:%08x",
             fnv1a(payload, 125));
    check(&b, NO_MAX, expect, "7-bit length 125");

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, payload, 126);
    snprintf(expect, sizeof(expect), "S2 E2#126:%08x",
             fnv1a(payload, 126));
    check(&b, NO_MAX, expect, "16-bit length 126");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 65535);
    snprintf(expect, sizeof(expect), "S1 E1#65535:%08x",
             fnv1a(payload, 65535));
    check(&b, NO_MAX, expect, "16-bit length 65535");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 65536);
    snprintf(expect, sizeof(expect), "S1 E1#65536:%08x",
             fnv1a(payload, 65536));
    check(&b, NO_MAX, expect, "64-bit length 65536");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, payload, 70000);
    frame_str(&b, FIN | PING, "between");
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, payload, 300);
    buf_add(&big, payload, 70000);
    buf_add(&big, payload, 300);
    snprintf(expect, sizeof(expect), "S1 C9[between] E1#70300:%08x",
             fnv1a(big.data, 70300));
    check(&b, NO_MAX, expect, "64-bit fragment, ping, 16-bit fragment");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_64, "short", 5);
    frame(&b, FIN | TEXT, MASKED, LEN_16, "x", 1);
    check(&b, NO_MAX, "S1 E1[short] S1 E1[x]",
          "non-minimal length encodings are accepted");

    /* partial input: events come before the frame is complete */

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, payload, 1000);
    ok(check_quiet(b.data, 2 + 2 + 4, NO_MAX, "S2", "header only"),
       "MSG_START as soon as the header is complete");

    free(payload);
    free(big.data);
    free(b.data);
}


/* ---- max_message ---- */

static void
test_max_message(void)
{
    char   expect[200];
    char   payload[301];
    buf_t  b;

    memset(&b, 0, sizeof(buf_t));
    memset(payload, 'm', sizeof(payload) - 1);
    payload[300] = '\0';

    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 10);
    check(&b, 10, "S1 E1[mmmmmmmmmm]", "max_message: exactly max is fine");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 11);
    check(&b, 10, "X1009", "max_message: max+1 => 1009");

    ok(check_quiet(b.data, 2, 10, "X1009", "header"),
       "max_message: 1009 from the first two header bytes");

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, payload, 200);
    ok(check_quiet(b.data, 200, 200, "S2", "200 of 200")
       && check_quiet(b.data, 4, 199, "X1009", "200 of 199"),
       "max_message: 16-bit length checked before the mask and payload");

    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, "", 0);
    check(&b, 0, "S2 E2[]", "max_message 0: empty message is fine");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, payload, 5);
    frame(&b, CONT, MASKED, LEN_AUTO, payload, 3);
    frame(&b, FIN | PING, MASKED, LEN_AUTO, payload, 125);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, payload, 2);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, payload, 10);
    snprintf(expect, sizeof(expect),
             "S1 C9[%.125s] E1[mmmmmmmmmm] S1 E1[mmmmmmmmmm]", payload);
    check(&b, 10, expect,
          "max_message: fragments adding up to max, control not counted");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, payload, 5);
    frame(&b, CONT, MASKED, LEN_AUTO, payload, 3);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, payload, 3);
    check(&b, 10, "S1 X1009", "max_message: fragments adding up to max+1");

    /* the failing fragment's header alone is enough */
    ok(check_quiet(b.data, 6 + 5 + 6 + 3 + 2, 10, "S1 X1009", "frag hdr"),
       "max_message: 1009 on the header of the fragment that overflows");

    buf_reset(&b);
    frame(&b, BINARY, MASKED, LEN_AUTO, payload, 10);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, payload, 0);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, payload, 10);
    check(&b, 10, "S2 E2[mmmmmmmmmm] S2 E2[mmmmmmmmmm]",
          "max_message: the count restarts with each message");

    buf_reset(&b);
    frame(&b, BINARY, MASKED, LEN_AUTO, payload, 10);
    frame(&b, CONT, MASKED, LEN_64, payload, 1);
    check(&b, 10, "S2 X1009", "max_message: full message plus one byte");

    free(b.data);
}


/* ---- UTF-8 ---- */

static int
ref_utf8(const unsigned char *s, size_t n)
{
    size_t    i, k, need;
    uint32_t  c, cp, min;

    i = 0;

    while (i < n) {
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


static void
text_case(const char *s, size_t len, int valid, const char *name)
{
    int    good;
    buf_t  b;
    char   expect[600];
    str_t  esc;

    memset(&b, 0, sizeof(buf_t));
    str_init(&esc);
    str_escaped(&esc, (const unsigned char *) s, len);

    if (valid) {
        snprintf(expect, sizeof(expect), "S1 E1[%s]", esc.s);

    } else {
        snprintf(expect, sizeof(expect), "S1 X1007");
    }

    good = (ngx_http_collab_utf8_valid((const unsigned char *) s, len)
            == valid);

    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, s, len);
    good &= check_quiet(b.data, b.len, NO_MAX, expect, name);

    /* binary: never checked */
    buf_reset(&b);
    frame(&b, FIN | BINARY, MASKED, LEN_AUTO, s, len);
    snprintf(expect, sizeof(expect), "S2 E2[%s]", esc.s);
    good &= check_quiet(b.data, b.len, NO_MAX, expect, name);

    ok(good, "UTF-8 %s: %s", valid ? "valid" : "invalid", name);

    free(esc.s);
    free(b.data);
}


static void
test_utf8(void)
{
    int             good;
    size_t          i, n;
    buf_t           b;
    uint32_t        v, w;
    unsigned char   s[4];
    static const unsigned char  tail[] = {
        0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2,
        0xe0, 0xed, 0xf0, 0xf4, 0xff
    };

#define T(s, valid, name)  text_case(s, sizeof(s) - 1, valid, name)

    T("", 1, "empty");
    T("Hello-\x7f", 1, "ASCII");
    T("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 1, "kosme");
    T("\xc2\x80\xdf\xbf", 1, "2-byte bounds U+0080 U+07FF");
    T("\xe0\xa0\x80\xef\xbf\xbf", 1, "3-byte bounds U+0800 U+FFFF");
    T("\xed\x9f\xbf\xee\x80\x80", 1, "around surrogates U+D7FF U+E000");
    T("\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 1, "U+10000 U+10FFFF");
    T("\xef\xbf\xbe\xef\xbf\xbf", 1, "noncharacters U+FFFE U+FFFF");
    T("\xc0\x80", 0, "overlong NUL C0 80");
    T("\xc1\xbf", 0, "overlong C1 BF");
    T("\xe0\x80\x80", 0, "overlong E0 80 80");
    T("\xe0\x9f\xbf", 0, "overlong E0 9F BF");
    T("\xf0\x8f\xbf\xbf", 0, "overlong F0 8F BF BF");
    T("\xed\xa0\x80", 0, "surrogate U+D800");
    T("\xed\xbf\xbf", 0, "surrogate U+DFFF");
    T("\xed\xa0\x80\xed\xb0\x80", 0, "surrogate pair");
    T("\xf4\x90\x80\x80", 0, "U+110000");
    T("\xf5\x80\x80\x80", 0, "F5 lead");
    T("\xf8\x88\x80\x80\x80", 0, "5-byte form");
    T("\xfe", 0, "FE");
    T("\xff", 0, "FF");
    T("\x80", 0, "lone continuation");
    T("ab\xbf" "cd", 0, "continuation after ASCII");
    T("\xc2", 0, "truncated 2-byte at end");
    T("\xe2\x82", 0, "truncated 3-byte at end");
    T("\xf0\x9f\x98", 0, "truncated 4-byte at end");
    T("\xc2" "A", 0, "lead followed by ASCII");
    T("\xe2\x82\xac" "0123456789abcdef\xe2\x82", 0,
      "truncated after the word-at-a-time path");

#undef T

    memset(&b, 0, sizeof(buf_t));

    /* a sequence split across fragments and a ping */

    frame(&b, TEXT, MASKED, LEN_AUTO, "x\xe2", 2);
    frame(&b, CONT, MASKED, LEN_AUTO, "\x82", 1);
    frame_str(&b, FIN | PING, "");
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "\xac" "y", 2);
    check(&b, NO_MAX, "S1 C9[] E1[x\\xe2\\x82\\xacy]",
          "UTF-8 sequence split across fragments and a ping");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "\xf0\x9f", 2);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "\x98\x80", 2);
    check(&b, NO_MAX, "S1 E1[\\xf0\\x9f\\x98\\x80]",
          "4-byte sequence split in halves across fragments");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "\xed", 1);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "\xa0\x80", 2);
    check(&b, NO_MAX, "S1 X1007", "surrogate split across fragments");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "ok\xe2\x82", 4);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "", 0);
    check(&b, NO_MAX, "S1 X1007",
          "message ends inside a sequence (empty last fragment)");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "ok\xe2\x82", 4);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "\xac", 1);
    check(&b, NO_MAX, "S1 E1[ok\\xe2\\x82\\xac]",
          "incomplete sequence at the end of a non-final fragment is fine");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "\xe2\x82", 2);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "A", 1);
    check(&b, NO_MAX, "S1 X1007", "sequence broken by the next fragment");

    /*
     * fail fast (Autobahn 6.4.x): the error comes with the first invalid
     * byte, before the rest of the frame or message arrives
     */

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO,
          "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"
          "\x65\x64\x69\x74\x65\x64", 21);
    ok(check_quiet(b.data, 6 + 13, NO_MAX, "S1 X1007", "6.4.1")
       && check_quiet(b.data, 6 + 12, NO_MAX, "S1", "6.4.1 before"),
       "fail fast: F4 90 rejected at the 90 byte inside a frame");

    buf_reset(&b);
    frame(&b, TEXT, MASKED, LEN_AUTO, "\xce\xba\xe1\xbd\xb9\xcf\x83", 7);
    frame(&b, CONT, MASKED, LEN_AUTO, "\xce\xbc\xce\xb5\xf4\x90", 6);
    frame(&b, FIN | CONT, MASKED, LEN_AUTO, "\x80\x80" "edited", 8);
    ok(check_quiet(b.data, 6 + 7 + 6 + 6, NO_MAX, "S1 X1007", "6.4.2"),
       "fail fast: invalid byte in a non-final fragment");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, "\xe0\x80\x80" "abc", 6);
    ok(check_quiet(b.data, 6 + 2, NO_MAX, "S1 X1007", "overlong")
       && check_quiet(b.data, 6 + 1, NO_MAX, "S1", "overlong lead"),
       "fail fast: overlong E0 80 rejected at the second byte");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, "\xed\xa0\x80" "abc", 6);
    ok(check_quiet(b.data, 6 + 2, NO_MAX, "S1 X1007", "surrogate"),
       "fail fast: surrogate ED A0 rejected at the second byte");

    buf_reset(&b);
    frame(&b, FIN | TEXT, MASKED, LEN_AUTO, "abc\xc0xyz", 7);
    ok(check_quiet(b.data, 6 + 4, NO_MAX, "S1 X1007", "C0"),
       "fail fast: C0 rejected at once");

    /* the validator against a reference decoder */

    good = 1;

    for (n = 1; n <= 3 && good; n++) {
        for (v = 0; v < (1u << (8 * n)) && good; v++) {
            for (i = 0; i < n; i++) {
                s[i] = (unsigned char) (v >> (8 * i));
            }

            if (ngx_http_collab_utf8_valid(s, n) != ref_utf8(s, n)) {
                diag("mismatch for %zu bytes %06x", n, (unsigned) v);
                good = 0;
            }
        }
    }

    ok(good, "UTF-8 validator equals a reference decoder on all strings "
       "of 1-3 bytes");

    good = 1;

    for (v = 0; v < 256 && good; v++) {
        for (w = 0; w < 16 * 16 * 16 && good; w++) {
            s[0] = (unsigned char) v;
            s[1] = tail[w & 0xf];
            s[2] = tail[(w >> 4) & 0xf];
            s[3] = tail[(w >> 8) & 0xf];

            if (ngx_http_collab_utf8_valid(s, 4) != ref_utf8(s, 4)) {
                diag("mismatch for %02x %02x %02x %02x",
                     s[0], s[1], s[2], s[3]);
                good = 0;
            }
        }
    }

    ok(good, "UTF-8 validator equals a reference decoder on 4-byte strings "
       "with boundary tail bytes");

    /* the parser's incremental check against the reference, all splits */

    good = 1;

    for (v = 0; v < 256 && good; v++) {
        for (w = 0; w < 16 * 16 * 16 && good; w++) {
            char   expect[64];
            char  *t;

            s[0] = (unsigned char) v;
            s[1] = tail[w & 0xf];
            s[2] = tail[(w >> 4) & 0xf];
            s[3] = tail[(w >> 8) & 0xf];

            buf_reset(&b);

            /* fragments of 1, 2 and 1 bytes */
            frame(&b, TEXT, MASKED, LEN_AUTO, s, 1);
            frame(&b, CONT, MASKED, LEN_AUTO, s + 1, 2);
            frame(&b, FIN | CONT, MASKED, LEN_AUTO, s + 3, 1);

            if (ref_utf8(s, 4)) {
                snprintf(expect, sizeof(expect), "S1 E1[");
                t = run_cuts(b.data, b.len, NO_MAX, NULL, 0);

                if (strncmp(t, expect, strlen(expect)) != 0) {
                    diag("valid %02x %02x %02x %02x: %s",
                         s[0], s[1], s[2], s[3], t);
                    good = 0;
                }

            } else {
                t = run_cuts(b.data, b.len, NO_MAX, NULL, 0);

                if (strcmp(t, "S1 X1007") != 0) {
                    diag("invalid %02x %02x %02x %02x: %s",
                         s[0], s[1], s[2], s[3], t);
                    good = 0;
                }
            }

            free(t);
        }
    }

    ok(good, "text fragments of 1+2+1 bytes agree with the reference");

    free(b.data);
}


/* ---- close frames ---- */

static void
close_case(const char *payload, size_t len, unsigned expect_code,
    const char *name)
{
    int    good;
    buf_t  b;
    char   expect[300];
    str_t  esc;

    memset(&b, 0, sizeof(buf_t));
    str_init(&esc);
    str_escaped(&esc, (const unsigned char *) payload, len);

    good = (ngx_http_collab_ws_close_check((const unsigned char *) payload,
                                           len)
            == expect_code);

    if (expect_code) {
        snprintf(expect, sizeof(expect), "X%u", expect_code);

    } else {
        snprintf(expect, sizeof(expect), "C8[%s]", esc.s);
    }

    frame(&b, FIN | CLOSE, MASKED, LEN_AUTO, payload, len);
    good &= check_quiet(b.data, b.len, NO_MAX, expect, name);

    ok(good, "close %s => %u", name, expect_code);

    free(esc.s);
    free(b.data);
}


static void
test_close(void)
{
    int             good;
    unsigned        code, want;
    unsigned char   cp[2];

#define C(s, code, name)  close_case(s, sizeof(s) - 1, code, name)

    C("", 0, "empty");
    C("\x03", 1002, "1-byte payload");
    C("\x03\xe8", 0, "1000");
    C("\x03\xe8" "normal closure", 0, "1000 with reason");
    C("\x03\xe9", 0, "1001");
    C("\x03\xea", 0, "1002");
    C("\x03\xeb", 0, "1003");
    C("\x03\xec", 1002, "1004");
    C("\x03\xed", 1002, "1005");
    C("\x03\xee", 1002, "1006");
    C("\x03\xef", 0, "1007");
    C("\x03\xf6", 0, "1014");
    C("\x03\xf7", 1002, "1015");
    C("\x03\xf8", 1002, "1016");
    C("\x00\x00", 1002, "0");
    C("\x03\xe7", 1002, "999");
    C("\x07\xd0", 1002, "2000");
    C("\x0b\xb7", 1002, "2999");
    C("\x0b\xb8", 0, "3000");
    C("\x13\x87", 0, "4999");
    C("\x13\x88", 1002, "5000");
    C("\xff\xff", 1002, "65535");
    C("\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 0,
      "UTF-8 reason");
    C("\x03\xe8\xce", 1007, "truncated UTF-8 reason");
    C("\x03\xe8\xed\xa0\x80", 1007, "surrogate in reason");
    C("\x03\xe8\xff", 1007, "FF in reason");
    C("\x03\xec\xff", 1002, "bad code wins over bad reason");

#undef C

    good = 1;

    for (code = 0; code < 65536; code++) {
        cp[0] = (unsigned char) (code >> 8);
        cp[1] = (unsigned char) code;

        want = ((code >= 1000 && code <= 1003)
                || (code >= 1007 && code <= 1014)
                || (code >= 3000 && code <= 4999)) ? 0 : 1002;

        if (ngx_http_collab_ws_close_check(cp, 2) != want) {
            diag("close code %u", code);
            good = 0;
        }
    }

    ok(good, "close_check: every 16-bit code");
}


/* ---- parser life cycle ---- */

static void
test_dead(void)
{
    int                           rc, good;
    buf_t                         b;
    unsigned char                *pos, bad[2] = { 0x81, 0x05 };
    ngx_http_collab_ws_parser_t   p;

    memset(&b, 0, sizeof(buf_t));
    frame_str(&b, FIN | TEXT, "Hello");

    ngx_http_collab_ws_parser_init(&p, NO_MAX);

    pos = bad;
    rc = ngx_http_collab_ws_parse(&p, &pos, bad + 2);
    good = (rc == NGX_HTTP_COLLAB_WS_ERROR && p.close_code == 1002
            && p.error != NULL);

    pos = b.data;
    rc = ngx_http_collab_ws_parse(&p, &pos, b.data + b.len);
    good &= (rc == NGX_HTTP_COLLAB_WS_ERROR && p.close_code == 1002
             && pos == b.data);

    ok(good, "after ERROR a valid frame still gets ERROR, nothing consumed");

    ngx_http_collab_ws_parser_init(&p, NO_MAX);

    pos = b.data;
    rc = ngx_http_collab_ws_parse(&p, &pos, b.data);
    good = (rc == NGX_HTTP_COLLAB_WS_AGAIN && pos == b.data);

    rc = ngx_http_collab_ws_parse(&p, &pos, b.data + b.len);
    good &= (rc == NGX_HTTP_COLLAB_WS_MSG_START
             && p.opcode == NGX_HTTP_COLLAB_WS_OP_TEXT);

    rc = ngx_http_collab_ws_parse(&p, &pos, b.data + b.len);
    good &= (rc == NGX_HTTP_COLLAB_WS_MSG_DATA && p.len == 5
             && p.data == b.data + 6 && memcmp(p.data, "Hello", 5) == 0);

    rc = ngx_http_collab_ws_parse(&p, &pos, b.data + b.len);
    good &= (rc == NGX_HTTP_COLLAB_WS_MSG_END);

    rc = ngx_http_collab_ws_parse(&p, &pos, b.data + b.len);
    good &= (rc == NGX_HTTP_COLLAB_WS_AGAIN && pos == b.data + b.len);

    ok(good, "event sequence and payload unmasked in place");

    free(b.data);
}


int
main(void)
{
    test_protocol_errors();
    test_messages();
    test_max_message();
    test_utf8();
    test_close();
    test_dead();

    printf("1..%d\n", test_no);

    if (test_failed) {
        diag("failed %d of %d tests", test_failed, test_no);
    }

    return test_failed ? 1 : 0;
}
