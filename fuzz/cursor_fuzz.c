
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * libFuzzer target of the event stream's resume cursor (Last-Event-ID,
 * since, epoch: ngx_http_collab_cursor.c).
 *
 * Input: byte 0 says which fields are present (bit 0: Last-Event-ID,
 * bit 1: since, bit 2: epoch); the rest is split at the first two 0xff
 * bytes into the three fields, each copied to an exactly sized heap block.
 * Checks: a cursor taken has since >= -1 and an epoch of at most 64 bytes
 * inside the field it came from; written back as "EPOCH:SEQ" it is taken
 * again as the same cursor; Last-Event-ID wins over the arguments.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_collab_cursor.h"


#define FUZZ_CHECK(cond)                                                    \
    if (!(cond)) {                                                          \
        fprintf(stderr, "cursor_fuzz: %s:%d: %s\n", __FILE__, __LINE__,     \
                #cond);                                                     \
        abort();                                                            \
    }


static unsigned char *
fuzz_field(const uint8_t **p, const uint8_t *last, size_t *len, int split)
{
    const uint8_t  *end;
    unsigned char  *f;

    end = split ? memchr(*p, 0xff, last - *p) : NULL;
    if (end == NULL) {
        end = last;
    }

    *len = end - *p;
    f = malloc(*len ? *len : 1);
    FUZZ_CHECK(f != NULL);
    memcpy(f, *p, *len);

    *p = (end < last) ? end + 1 : last;

    return f;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                        rc, rc2;
    size_t                     id_len, since_len, epoch_len, n;
    unsigned char             *id, *since, *epoch, *text;
    const uint8_t             *p, *last;
    ngx_http_collab_cursor_t   c, c2;

    if (size == 0) {
        return 0;
    }

    p = data + 1;
    last = data + size;

    id = fuzz_field(&p, last, &id_len, 1);
    since = fuzz_field(&p, last, &since_len, 1);
    epoch = fuzz_field(&p, last, &epoch_len, 0);

    rc = ngx_http_collab_cursor_parse((data[0] & 1) ? id : NULL, id_len,
                                      (data[0] & 2) ? since : NULL, since_len,
                                      (data[0] & 4) ? epoch : NULL, epoch_len,
                                      &c);

    if (rc == 0) {
        FUZZ_CHECK(c.since >= -1);
        FUZZ_CHECK(c.epoch_len <= NGX_HTTP_COLLAB_CURSOR_EPOCH_MAX);
        FUZZ_CHECK((c.epoch == NULL) == (c.epoch_len == 0));

        if ((data[0] & 1) && id_len) {
            FUZZ_CHECK(c.since >= 0);
            FUZZ_CHECK(c.epoch == NULL
                       || (c.epoch == id && c.epoch_len < id_len));

        } else if (data[0] & 2) {
            FUZZ_CHECK(c.since >= 0);
            FUZZ_CHECK(c.epoch == NULL || c.epoch == epoch);

        } else {
            FUZZ_CHECK(c.since == -1 && c.epoch == NULL);
        }

        if (c.since >= 0 && (c.epoch == NULL || !memchr(c.epoch, ':',
                                                         c.epoch_len)))
        {
            /* written back as an event id, it reads the same */
            text = malloc(c.epoch_len + 1 + 20);
            FUZZ_CHECK(text != NULL);
            if (c.epoch_len) {
                memcpy(text, c.epoch, c.epoch_len);
            }
            n = c.epoch_len;
            text[n++] = ':';
            n += sprintf((char *) text + n, "%lld", (long long) c.since);

            rc2 = ngx_http_collab_cursor_parse(text, n, NULL, 0, NULL, 0,
                                               &c2);
            FUZZ_CHECK(rc2 == 0);
            FUZZ_CHECK(c2.since == c.since && c2.epoch_len == c.epoch_len);
            FUZZ_CHECK(c.epoch_len == 0
                       || memcmp(c2.epoch, c.epoch, c.epoch_len) == 0);
            free(text);
        }
    }

    free(id);
    free(since);
    free(epoch);

    return 0;
}
