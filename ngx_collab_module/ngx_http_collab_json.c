
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <string.h>

#include "ngx_http_collab_json.h"


/* the innermost open container is an object */
#define ngx_http_collab_json_in_object(object, depth)                        \
    ((object)[((depth) - 1) / 8] & (1 << (((depth) - 1) % 8)))


typedef struct {
    const unsigned char  *start;
    const unsigned char  *p;
    const unsigned char  *last;
} ngx_http_collab_json_t;


/* the states of ngx_http_collab_json_scan() */
#define NGX_HTTP_COLLAB_JSON_VALUE    0
#define NGX_HTTP_COLLAB_JSON_AFTER    1
#define NGX_HTTP_COLLAB_JSON_KEY      2
#define NGX_HTTP_COLLAB_JSON_END      3
#define NGX_HTTP_COLLAB_JSON_INVALID  4


typedef struct {
    ngx_http_collab_json_t        j;
    const char                   *name;
    size_t                        name_len;
    ngx_http_collab_json_span_t  *member;
    size_t                        depth;
    int                           capture;   /* 1: next value, 2: in it */
    unsigned char                 object[NGX_HTTP_COLLAB_JSON_DEPTH / 8 + 1];
} ngx_http_collab_json_scan_t;


static void ngx_http_collab_json_space(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_string(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_utf8(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_hex4(const unsigned char *p,
    unsigned *value);
static int ngx_http_collab_json_number(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_literal(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_key_is(const unsigned char *p,
    const unsigned char *last, const char *name, size_t name_len);
static int ngx_http_collab_json_scan_value(ngx_http_collab_json_scan_t *s);
static int ngx_http_collab_json_scan_open(ngx_http_collab_json_scan_t *s);
static int ngx_http_collab_json_scan_after(ngx_http_collab_json_scan_t *s);
static int ngx_http_collab_json_scan_key(ngx_http_collab_json_scan_t *s);


static void
ngx_http_collab_json_space(ngx_http_collab_json_t *j)
{
    while (j->p < j->last
           && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n'
               || *j->p == '\r'))
    {
        j->p++;
    }
}


static int
ngx_http_collab_json_hex4(const unsigned char *p, unsigned *value)
{
    unsigned  i, c, v;

    v = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            c -= '0';

        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            c = (c | 0x20) - 'a' + 10;

        } else {
            return -1;
        }

        v = v << 4 | c;
    }

    *value = v;

    return 0;
}


/* one UTF-8 sequence of 2-4 bytes at j->p: no overlong form, no surrogate */

static int
ngx_http_collab_json_utf8(ngx_http_collab_json_t *j)
{
    size_t    n, i;
    uint32_t  c, min;

    c = *j->p;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 1; c &= 0x1f; min = 0x80;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2; c &= 0x0f; min = 0x800;

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3; c &= 0x07; min = 0x10000;

    } else {
        return -1;
    }

    if ((size_t) (j->last - j->p) <= n) {
        return -1;
    }

    for (i = 1; i <= n; i++) {
        if ((j->p[i] & 0xc0) != 0x80) {
            return -1;
        }

        c = c << 6 | (j->p[i] & 0x3f);
    }

    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
        return -1;
    }

    j->p += n + 1;

    return 0;
}


/* a string, j->p at its opening quote; j->p after the closing one */

static int
ngx_http_collab_json_string(ngx_http_collab_json_t *j)
{
    unsigned  u, lo;

    j->p++;

    while (j->p < j->last) {

        if (*j->p == '"') {
            j->p++;
            return 0;
        }

        if (*j->p < 0x20) {
            return -1;
        }

        if (*j->p >= 0x80) {
            if (ngx_http_collab_json_utf8(j) != 0) {
                return -1;
            }

            continue;
        }

        if (*j->p != '\\') {
            j->p++;
            continue;
        }

        if (j->last - j->p < 2) {
            return -1;
        }

        switch (j->p[1]) {

        case '"': case '\\': case '/': case 'b': case 'f': case 'n':
        case 'r': case 't':
            j->p += 2;
            continue;

        case 'u':
            break;

        default:
            return -1;
        }

        if (j->last - j->p < 6
            || ngx_http_collab_json_hex4(j->p + 2, &u) != 0
            || u == 0)
        {
            return -1;
        }

        j->p += 6;

        if (u >= 0xdc00 && u <= 0xdfff) {
            return -1;
        }

        if (u >= 0xd800 && u <= 0xdbff) {
            /* a high surrogate needs its low half right after it */

            if (j->last - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u'
                || ngx_http_collab_json_hex4(j->p + 2, &lo) != 0
                || lo < 0xdc00 || lo > 0xdfff)
            {
                return -1;
            }

            j->p += 6;
        }
    }

    return -1;
}


/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */

static int
ngx_http_collab_json_number(ngx_http_collab_json_t *j)
{
    const unsigned char  *p, *last;

    p = j->p;
    last = j->last;

    if (p < last && *p == '-') {
        p++;
    }

    if (p == last || *p < '0' || *p > '9') {
        return -1;
    }

    if (*p++ != '0') {
        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return -1;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == last || *p < '0' || *p > '9') {
            return -1;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    j->p = p;

    return 0;
}


static int
ngx_http_collab_json_literal(ngx_http_collab_json_t *j)
{
    size_t       n;
    const char  *word;

    switch (*j->p) {
    case 't':
        word = "true";
        break;
    case 'f':
        word = "false";
        break;
    default:
        word = "null";
        break;
    }

    n = strlen(word);

    if ((size_t) (j->last - j->p) < n || memcmp(j->p, word, n) != 0) {
        return -1;
    }

    j->p += n;

    return 0;
}


/* a valid key's text (between its quotes) against a plain ASCII name */

static int
ngx_http_collab_json_key_is(const unsigned char *p, const unsigned char *last,
    const char *name, size_t name_len)
{
    size_t    i;
    unsigned  c;

    for (i = 0; p < last; i++) {

        if (*p != '\\') {
            c = *p++;

        } else {
            switch (p[1]) {
            case 'u':
                (void) ngx_http_collab_json_hex4(p + 2, &c);
                p += 6;
                break;
            case 'b':
                c = '\b'; p += 2;
                break;
            case 'f':
                c = '\f'; p += 2;
                break;
            case 'n':
                c = '\n'; p += 2;
                break;
            case 'r':
                c = '\r'; p += 2;
                break;
            case 't':
                c = '\t'; p += 2;
                break;
            default:
                c = p[1]; p += 2;
                break;
            }
        }

        if (i >= name_len || c != (unsigned char) name[i]) {
            return 0;
        }
    }

    return i == name_len;
}


int
ngx_http_collab_json_scan(const unsigned char *text, size_t len,
    const char *name, size_t name_len, ngx_http_collab_json_span_t *member,
    size_t *error)
{
    int                          state;
    ngx_http_collab_json_scan_t  s;

    s.j.start = text;
    s.j.p = text;
    s.j.last = text + len;
    s.name = name;
    s.name_len = name_len;
    s.member = member;

    member->found = 0;
    member->start = 0;
    member->end = 0;

    s.depth = 0;
    s.capture = 0;

    state = NGX_HTTP_COLLAB_JSON_VALUE;

    for ( ;; ) {

        switch (state) {

        case NGX_HTTP_COLLAB_JSON_VALUE:
            state = ngx_http_collab_json_scan_value(&s);
            break;

        case NGX_HTTP_COLLAB_JSON_AFTER:
            state = ngx_http_collab_json_scan_after(&s);
            break;

        case NGX_HTTP_COLLAB_JSON_KEY:
            state = ngx_http_collab_json_scan_key(&s);
            break;

        case NGX_HTTP_COLLAB_JSON_END:
            return 0;

        default: /* NGX_HTTP_COLLAB_JSON_INVALID */
            *error = s.j.p - text;
            member->found = 0;

            return -1;
        }
    }
}


/* a value starts at s->j.p, after optional white space */

static int
ngx_http_collab_json_scan_value(ngx_http_collab_json_scan_t *s)
{
    int  rc;

    ngx_http_collab_json_space(&s->j);

    if (s->j.p == s->j.last) {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    if (s->capture == 1) {
        s->member->start = s->j.p - s->j.start;
        s->capture = 2;
    }

    switch (*s->j.p) {

    case '{':
    case '[':
        return ngx_http_collab_json_scan_open(s);

    case '"':
        rc = ngx_http_collab_json_string(&s->j);
        break;

    case 't':
    case 'f':
    case 'n':
        rc = ngx_http_collab_json_literal(&s->j);
        break;

    default:
        rc = ngx_http_collab_json_number(&s->j);
        break;
    }

    return (rc != 0) ? NGX_HTTP_COLLAB_JSON_INVALID
                     : NGX_HTTP_COLLAB_JSON_AFTER;
}


/* "{" or "[" at s->j.p: an empty container is a complete value */

static int
ngx_http_collab_json_scan_open(ngx_http_collab_json_scan_t *s)
{
    int  is_object;

    if (s->depth == NGX_HTTP_COLLAB_JSON_DEPTH) {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    is_object = (*s->j.p == '{');

    if (is_object) {
        s->object[s->depth / 8] |= (unsigned char) (1 << (s->depth % 8));

    } else {
        s->object[s->depth / 8] &= (unsigned char) ~(1 << (s->depth % 8));
    }

    s->depth++;
    s->j.p++;

    ngx_http_collab_json_space(&s->j);

    if (s->j.p < s->j.last && *s->j.p == (is_object ? '}' : ']')) {
        s->depth--;
        s->j.p++;
        return NGX_HTTP_COLLAB_JSON_AFTER;
    }

    return is_object ? NGX_HTTP_COLLAB_JSON_KEY : NGX_HTTP_COLLAB_JSON_VALUE;
}


/* a value is complete: the end of the text, a "," or a closing bracket */

static int
ngx_http_collab_json_scan_after(ngx_http_collab_json_scan_t *s)
{
    int  in_object;

    if (s->capture == 2 && s->depth == 1) {
        s->member->end = s->j.p - s->j.start;
        s->member->found = 1;
        s->capture = 0;
    }

    ngx_http_collab_json_space(&s->j);

    if (s->depth == 0) {
        return (s->j.p != s->j.last) ? NGX_HTTP_COLLAB_JSON_INVALID
                                     : NGX_HTTP_COLLAB_JSON_END;
    }

    if (s->j.p == s->j.last) {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    in_object = ngx_http_collab_json_in_object(s->object, s->depth);

    if (*s->j.p == ',') {
        s->j.p++;

        return in_object ? NGX_HTTP_COLLAB_JSON_KEY
                         : NGX_HTTP_COLLAB_JSON_VALUE;
    }

    if (*s->j.p != (in_object ? '}' : ']')) {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    s->depth--;
    s->j.p++;

    return NGX_HTTP_COLLAB_JSON_AFTER;
}


/* a member's name and ":"; the member looked for is captured at depth 1 */

static int
ngx_http_collab_json_scan_key(ngx_http_collab_json_scan_t *s)
{
    const unsigned char  *key;

    ngx_http_collab_json_space(&s->j);

    if (s->j.p == s->j.last || *s->j.p != '"') {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    key = s->j.p;

    if (ngx_http_collab_json_string(&s->j) != 0) {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    if (s->depth == 1
        && s->name_len != 0
        && ngx_http_collab_json_key_is(key + 1, s->j.p - 1, s->name,
                                       s->name_len))
    {
        if (s->member->found || s->capture) {
            /* a duplicate */
            s->j.p = key;
            return NGX_HTTP_COLLAB_JSON_INVALID;
        }

        s->capture = 1;
    }

    ngx_http_collab_json_space(&s->j);

    if (s->j.p == s->j.last || *s->j.p != ':') {
        return NGX_HTTP_COLLAB_JSON_INVALID;
    }

    s->j.p++;

    return NGX_HTTP_COLLAB_JSON_VALUE;
}


int
ngx_http_collab_json_element(const unsigned char *text, size_t len,
    size_t *pos, ngx_http_collab_json_span_t *elem)
{
    size_t                  depth;
    unsigned char           c;
    ngx_http_collab_json_t  j;

    j.start = text;
    j.p = text + *pos;
    j.last = text + len;

    elem->found = 0;

    ngx_http_collab_json_space(&j);

    if (*pos == 0) {
        if (j.p == j.last || *j.p != '[') {
            return -1;
        }

        j.p++;
        ngx_http_collab_json_space(&j);

        if (j.p < j.last && *j.p == ']') {
            *pos = len;
            return 0;
        }

    } else {
        /* after an element: "," or the closing "]" */

        if (j.p == j.last || *j.p != ',') {
            *pos = len;
            return 0;
        }

        j.p++;
        ngx_http_collab_json_space(&j);
    }

    if (j.p == j.last) {
        return -1;
    }

    elem->start = j.p - text;

    /* the text is valid: skip strings, count brackets */

    depth = 0;

    while (j.p < j.last) {
        c = *j.p;

        if (c == '"') {
            if (ngx_http_collab_json_string(&j) != 0) {
                return -1;
            }

        } else if (c == '{' || c == '[') {
            depth++;
            j.p++;

        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                break;
            }

            depth--;
            j.p++;

        } else if (c == ',' && depth == 0) {
            break;

        } else {
            j.p++;
        }
    }

    /* the element's trailing white space is not its own */

    while (j.p > text + elem->start
           && (j.p[-1] == ' ' || j.p[-1] == '\t' || j.p[-1] == '\n'
               || j.p[-1] == '\r'))
    {
        j.p--;
    }

    elem->end = j.p - text;
    elem->found = 1;
    *pos = elem->end;

    return 1;
}


size_t
ngx_http_collab_json_compact(unsigned char *dst, const unsigned char *src,
    size_t len)
{
    size_t          i, n;
    unsigned char   c;
    int             in_string;

    n = 0;
    in_string = 0;

    for (i = 0; i < len; i++) {
        c = src[i];

        if (in_string) {
            dst[n++] = c;

            if (c == '\\' && i + 1 < len) {
                dst[n++] = src[++i];

            } else if (c == '"') {
                in_string = 0;
            }

            continue;
        }

        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        }

        if (c == '"') {
            in_string = 1;
        }

        dst[n++] = c;
    }

    return n;
}
