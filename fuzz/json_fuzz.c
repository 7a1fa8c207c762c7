
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * libFuzzer target of the collab.v1 message decoder: the JSON scanner
 * that finds a message's "data" (ngx_http_collab_json.c) against jansson,
 * decoding as the module does (JSON_REJECT_DUPLICATES,
 * JSON_DECODE_INT_AS_REAL; JSON_DECODE_ANY to compare every value).
 *
 * Input: the message text.  Checks: whatever jansson takes, the scanner
 * takes (but NUL bytes between tokens, which jansson passes over); the
 * scanner refuses only what jansson refuses, but for numbers
 * beyond a double and duplicate keys other than a top-level "data", which
 * only jansson checks; the "data" span found,
 * compacted, decodes to the value jansson found; the compacted text holds
 * no white space outside strings and is no longer than the span; the
 * elements of an array, found one by one, decode to jansson's elements.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ngx_http_collab_json.h"


#define FUZZ_CHECK(cond)                                                    \
    if (!(cond)) {                                                          \
        fprintf(stderr, "json_fuzz: %s:%d: %s\n", __FILE__, __LINE__,       \
                #cond);                                                     \
        abort();                                                            \
    }

#define FUZZ_FLAGS                                                          \
    (JSON_REJECT_DUPLICATES|JSON_DECODE_INT_AS_REAL|JSON_DECODE_ANY)


static json_t *
fuzz_decode(const unsigned char *p, size_t len)
{
    unsigned char  *copy;
    json_t         *v;

    /* an exactly sized copy: ASan sees any read past the span */
    copy = malloc(len ? len : 1);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, p, len);

    v = json_loadb((const char *) copy, len, FUZZ_FLAGS, NULL);
    free(copy);

    return v;
}


static void
fuzz_compare(const unsigned char *text, ngx_http_collab_json_span_t *span,
    json_t *want)
{
    int             in_string;
    size_t          i, n, len;
    json_t         *got;
    unsigned char  *out;

    FUZZ_CHECK(span->start < span->end);

    len = span->end - span->start;
    out = malloc(len);
    FUZZ_CHECK(out != NULL);

    n = ngx_http_collab_json_compact(out, text + span->start, len);
    FUZZ_CHECK(n > 0 && n <= len);

    in_string = 0;

    for (i = 0; i < n; i++) {
        if (in_string) {
            if (out[i] == '\\') {
                i++;

            } else if (out[i] == '"') {
                in_string = 0;
            }

            continue;
        }

        FUZZ_CHECK(out[i] != ' ' && out[i] != '\t' && out[i] != '\n'
                   && out[i] != '\r');

        if (out[i] == '"') {
            in_string = 1;
        }
    }

    got = fuzz_decode(out, n);
    FUZZ_CHECK(got != NULL);
    FUZZ_CHECK(json_equal(got, want));

    json_decref(got);
    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                          rc, more;
    size_t                       err, pos, i;
    json_t                      *root, *want;
    json_error_t                 jerr;
    unsigned char               *text;
    ngx_http_collab_json_span_t  span;

    text = malloc(size ? size : 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);

    root = json_loadb((const char *) text, size, FUZZ_FLAGS, &jerr);
    rc = ngx_http_collab_json_scan(text, size, "data", 4, &span, &err);

    if (rc != 0) {
        /* jansson passes over NUL bytes between tokens: they are invalid */
        FUZZ_CHECK(err <= size);
        FUZZ_CHECK(root == NULL || memchr(text, 0, size) != NULL);
        json_decref(root);
        free(text);
        return 0;
    }

    if (root == NULL) {
        FUZZ_CHECK(strstr(jerr.text, "overflow") != NULL
                   || strstr(jerr.text, "duplicate") != NULL);
        free(text);
        return 0;
    }

    want = json_is_object(root) ? json_object_get(root, "data") : NULL;

    FUZZ_CHECK((want != NULL) == (span.found != 0));

    if (want) {
        fuzz_compare(text, &span, want);
    }

    if (json_is_array(root)) {
        pos = 0;

        for (i = 0; ; i++) {
            more = ngx_http_collab_json_element(text, size, &pos, &span);
            FUZZ_CHECK(more >= 0);

            if (more == 0) {
                break;
            }

            FUZZ_CHECK(i < json_array_size(root));
            fuzz_compare(text, &span, json_array_get(root, i));
        }

        FUZZ_CHECK(i == json_array_size(root));

    } else {
        pos = 0;
        FUZZ_CHECK(ngx_http_collab_json_element(text, size, &pos, &span)
                   == -1);
    }

    json_decref(root);
    free(text);

    return 0;
}
