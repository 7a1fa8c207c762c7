
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * libFuzzer target of the JWT verifier.
 *
 * Input: byte 0 is harness control, the rest is the token.
 *
 *   bit 0     sign: the rest is "header.claims" and the harness appends a
 *             valid HMAC, so that the fuzzer gets past the signature into
 *             key selection and claims checks
 *   bits 1-2  HMAC of the signing: 0, 3 => HS256, 1 => HS384, 2 => HS512
 *   bit 3     check iss "joe"
 *   bit 4     check aud "collab"
 *   bit 5     leeway 60 s
 *   bit 6     raw: the rest is the header JSON, a NUL byte and the claims
 *             JSON, which the harness base64url-encodes and signs (bit 0)
 *             or ends with an empty signature, so that mutations reach the
 *             JSON itself
 *
 * Keys: the RFC 7515 A.1 secret (hs256, no kid), hs384 "h384", hs512
 * "h512" and "h512b", and the public keys of RFC 7515 A.2 (rs256 "rsa"),
 * A.3 (es256, no kid) and RFC 8037 A.4 (eddsa "ed"); "now" is before the
 * RFC tokens' exp, so the seed corpus holds tokens that verify.
 *
 * Every call must return 0 with a claims object or -1 with a documented
 * error and no claims, give the same answer twice, and leave the OpenSSL
 * error queue as it found it.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_http_collab_jwt.h"


#define FUZZ_CHECK(cond)                                                    \
    if (!(cond)) {                                                          \
        fprintf(stderr, "jwt_fuzz: %s:%d: %s\n", __FILE__, __LINE__,        \
                #cond);                                                     \
        abort();                                                            \
    }


#define FUZZ_NOW  1300819000LL


int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_http_collab_jwt_keys_t  *fuzz_keys;


static const unsigned char  fuzz_hs256[] = {
    0x03, 0x23, 0x35, 0x4b, 0x2b, 0x0f, 0xa5, 0xbc, 0x83, 0x7e, 0x06, 0x65,
    0x77, 0x7b, 0xa6, 0x8f, 0x5a, 0xb3, 0x28, 0xe6, 0xf0, 0x54, 0xc9, 0x28,
    0xa9, 0x0f, 0x84, 0xb2, 0xd2, 0x50, 0x2e, 0xbf, 0xd3, 0xfb, 0x5a, 0x92,
    0xd2, 0x06, 0x47, 0xef, 0x96, 0x8a, 0xb4, 0xc3, 0x77, 0x62, 0x3d, 0x22,
    0x3d, 0x2e, 0x21, 0x72, 0x05, 0x2e, 0x4f, 0x08, 0xc0, 0xcd, 0x9a, 0xf5,
    0x67, 0xd0, 0x80, 0xa3
};

/* 48 and 64 bytes: the hash sizes */

static const char  fuzz_hs384[] =
    "fuzz-hs384-secret-0123456789abcdef0123456789abcd";

static const char  fuzz_hs512[] =
    "fuzz-hs512-secret-0123456789abcdef0123456789abcdef0123456789abcd";

static const char  fuzz_rs256[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAofgWCuLjybRlzo0tZWJj\n"
    "NiuSfb4p4fAkd/wWJcyQoTbji9k0l8W26mPddxHmfHQp+Vaw+4qPCJrcS2mJPMEz\n"
    "P1Pt0Bm4d4QlL+yRT+SFd2lZS+pCgNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo\n"
    "9wGzjb/7OMg0LOL+bSf63kpaSHSXndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTB\n"
    "EMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6/I5IhlJH7aGhyxX\n"
    "FvUK+DWNmoudF8NAco9/h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXp\n"
    "oQIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

static const char  fuzz_es256[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7\n"
    "6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n"
    "-----END PUBLIC KEY-----\n";

static const char  fuzz_eddsa[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n"
    "-----END PUBLIC KEY-----\n";

static const char  *fuzz_errors[] = {
    "token too long", "malformed token", "malformed header",
    "alg none rejected", "unsupported algorithm", "unsupported crit header",
    "unknown kid", "kid required", "algorithm mismatch", "bad signature",
    "malformed claims", "malformed exp", "malformed nbf", "malformed iat",
    "expired", "not yet valid", "bad issuer", "bad audience",
    "internal error", NULL
};


static void
fuzz_key(const char *alg, const char *kid, const void *data, size_t len)
{
    const char  *err;

    if (ngx_http_collab_jwt_key_add(fuzz_keys, alg, kid, data, len, &err)
        != 0)
    {
        fprintf(stderr, "jwt_fuzz: key %s: %s\n", alg, err);
        abort();
    }
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void) argc;
    (void) argv;

    fuzz_keys = ngx_http_collab_jwt_keys_create();
    FUZZ_CHECK(fuzz_keys != NULL);

    fuzz_key("hs256", NULL, fuzz_hs256, sizeof(fuzz_hs256));
    fuzz_key("hs384", "h384", fuzz_hs384, sizeof(fuzz_hs384) - 1);
    fuzz_key("hs512", "h512", fuzz_hs512, sizeof(fuzz_hs512) - 1);
    fuzz_key("hs512", "h512b", fuzz_hs256, sizeof(fuzz_hs256));
    fuzz_key("rs256", "rsa", fuzz_rs256, sizeof(fuzz_rs256) - 1);
    fuzz_key("es256", NULL, fuzz_es256, sizeof(fuzz_es256) - 1);
    fuzz_key("eddsa", "ed", fuzz_eddsa, sizeof(fuzz_eddsa) - 1);

    return 0;
}


static size_t
fuzz_b64url(const unsigned char *p, size_t len, char *dst)
{
    size_t       i, n;
    unsigned     acc, bits;
    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    n = 0;
    acc = 0;
    bits = 0;

    for (i = 0; i < len; i++) {
        acc = (acc << 8) | p[i];
        bits += 8;

        while (bits >= 6) {
            bits -= 6;
            dst[n++] = alphabet[(acc >> bits) & 0x3f];
        }

        acc &= (1u << bits) - 1;
    }

    if (bits) {
        dst[n++] = alphabet[(acc << (6 - bits)) & 0x3f];
    }

    return n;
}


static int
fuzz_known(const char *err)
{
    int  i;

    for (i = 0; fuzz_errors[i]; i++) {
        if (err && strcmp(err, fuzz_errors[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                          rc, rc2;
    char                        *tok;
    unsigned char               *buf;
    const uint8_t               *nul;
    size_t                       len, n;
    json_t                      *claims, *claims2;
    unsigned                     ctl;
    const char                  *err, *err2;
    const EVP_MD                *md;
    const unsigned char         *secret;
    size_t                       secret_len;
    unsigned int                 mac_len;
    unsigned char                mac[EVP_MAX_MD_SIZE];
    ngx_http_collab_jwt_opts_t   opts;

    if (size == 0) {
        return 0;
    }

    ctl = data[0];
    data++;
    size--;

    /* raw mode grows the input by 4/3, then "." and up to 86 characters */
    buf = malloc(2 * size + 2 + 2 * EVP_MAX_MD_SIZE);
    FUZZ_CHECK(buf != NULL);

    if (ctl & 64) {
        nul = memchr(data, '\0', size);
        n = nul ? (size_t) (nul - data) : size;

        len = fuzz_b64url(data, n, (char *) buf);
        buf[len++] = '.';

        if (nul) {
            len += fuzz_b64url(nul + 1, size - n - 1, (char *) buf + len);
        }

    } else {
        if (size) {
            memcpy(buf, data, size);
        }

        len = size;
    }

    if ((ctl & 1) && len <= NGX_HTTP_COLLAB_JWT_MAX_TOKEN) {

        switch ((ctl >> 1) & 3) {
        case 1:
            md = EVP_sha384();
            secret = (const unsigned char *) fuzz_hs384;
            secret_len = sizeof(fuzz_hs384) - 1;
            break;

        case 2:
            md = EVP_sha512();
            secret = (const unsigned char *) fuzz_hs512;
            secret_len = sizeof(fuzz_hs512) - 1;
            break;

        default:
            md = EVP_sha256();
            secret = fuzz_hs256;
            secret_len = sizeof(fuzz_hs256);
        }

        FUZZ_CHECK(HMAC(md, secret, (int) secret_len, buf, len, mac,
                        &mac_len)
                   != NULL);

        buf[len++] = '.';
        len += fuzz_b64url(mac, mac_len, (char *) buf + len);

    } else if (ctl & 64) {
        buf[len++] = '.';
    }

    /* an exactly sized copy: ASan sees any read past the token */
    tok = malloc(len ? len : 1);
    FUZZ_CHECK(tok != NULL);

    memcpy(tok, buf, len);
    free(buf);

    memset(&opts, 0, sizeof(opts));
    opts.iss = (ctl & 8) ? "joe" : NULL;
    opts.aud = (ctl & 16) ? "collab" : NULL;
    opts.leeway = (ctl & 32) ? 60 : 0;

    FUZZ_CHECK(ERR_peek_error() == 0);

    err = NULL;
    rc = ngx_http_collab_jwt_verify(fuzz_keys, tok, len, FUZZ_NOW, &opts,
                                    &claims, &err);

    FUZZ_CHECK(ERR_peek_error() == 0);

    if (rc == 0) {
        FUZZ_CHECK(json_is_object(claims));
        FUZZ_CHECK(claims->refcount == 1);
        FUZZ_CHECK(len <= NGX_HTTP_COLLAB_JWT_MAX_TOKEN);

    } else {
        FUZZ_CHECK(rc == -1);
        FUZZ_CHECK(claims == NULL);
        FUZZ_CHECK(fuzz_known(err));
    }

    err2 = NULL;
    rc2 = ngx_http_collab_jwt_verify(fuzz_keys, tok, len, FUZZ_NOW, &opts,
                                     &claims2, &err2);

    FUZZ_CHECK(rc2 == rc);
    FUZZ_CHECK(rc == 0 || strcmp(err, err2) == 0);
    FUZZ_CHECK(rc != 0 || json_equal(claims, claims2));

    json_decref(claims);
    json_decref(claims2);

    free(tok);

    return 0;
}
