
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


static void ngx_http_collab_json_space(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_string(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_utf8(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_hex4(const unsigned char *p,
    unsigned *value);
static int ngx_http_collab_json_number(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_literal(ngx_http_collab_json_t *j);
static int ngx_http_collab_json_key_is(const unsigned char *p,
    const unsigned char *last, const char *name, size_t name_len);


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
    int                     rc, capture, is_object;
    size_t                  depth;
    const unsigned char    *key;
    ngx_http_collab_json_t  j;
    unsigned char           object[NGX_HTTP_COLLAB_JSON_DEPTH / 8 + 1];

    j.start = text;
    j.p = text;
    j.last = text + len;

    member->found = 0;
    member->start = 0;
    member->end = 0;

    depth = 0;
    capture = 0;

value:

    ngx_http_collab_json_space(&j);

    if (j.p == j.last) {
        goto invalid;
    }

    if (capture == 1) {
        member->start = j.p - text;
        capture = 2;
    }

    switch (*j.p) {

    case '{':
    case '[':
        if (depth == NGX_HTTP_COLLAB_JSON_DEPTH) {
            goto invalid;
        }

        is_object = (*j.p == '{');

        if (is_object) {
            object[depth / 8] |= (unsigned char) (1 << (depth % 8));

        } else {
            object[depth / 8] &= (unsigned char) ~(1 << (depth % 8));
        }

        depth++;
        j.p++;

        ngx_http_collab_json_space(&j);

        if (j.p < j.last && *j.p == (is_object ? '}' : ']')) {
            depth--;
            j.p++;
            goto done;
        }

        if (is_object) {
            goto key;
        }

        goto value;

    case '"':
        rc = ngx_http_collab_json_string(&j);
        break;

    case 't':
    case 'f':
    case 'n':
        rc = ngx_http_collab_json_literal(&j);
        break;

    default:
        rc = ngx_http_collab_json_number(&j);
        break;
    }

    if (rc != 0) {
        goto invalid;
    }

done:

    /* a value is complete */

    if (capture == 2 && depth == 1) {
        member->end = j.p - text;
        member->found = 1;
        capture = 0;
    }

    ngx_http_collab_json_space(&j);

    if (depth == 0) {
        if (j.p != j.last) {
            goto invalid;
        }

        return 0;
    }

    if (j.p == j.last) {
        goto invalid;
    }

    if (*j.p == ',') {
        j.p++;

        if (ngx_http_collab_json_in_object(object, depth)) {
            goto key;
        }

        goto value;
    }

    if (*j.p != (ngx_http_collab_json_in_object(object, depth) ? '}' : ']')) {
        goto invalid;
    }

    depth--;
    j.p++;

    goto done;

key:

    ngx_http_collab_json_space(&j);

    if (j.p == j.last || *j.p != '"') {
        goto invalid;
    }

    key = j.p;

    if (ngx_http_collab_json_string(&j) != 0) {
        goto invalid;
    }

    if (depth == 1
        && ngx_http_collab_json_key_is(key + 1, j.p - 1, name, name_len))
    {
        if (member->found || capture) {
            /* a duplicate */
            j.p = key;
            goto invalid;
        }

        capture = 1;
    }

    ngx_http_collab_json_space(&j);

    if (j.p == j.last || *j.p != ':') {
        goto invalid;
    }

    j.p++;

    goto value;

invalid:

    *error = j.p - text;
    member->found = 0;

    return -1;
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
