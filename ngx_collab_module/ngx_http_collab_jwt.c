
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "ngx_http_collab_jwt.h"


#define NGX_HTTP_COLLAB_JWT_HMAC    0
#define NGX_HTTP_COLLAB_JWT_RSA     1
#define NGX_HTTP_COLLAB_JWT_EC      2
#define NGX_HTTP_COLLAB_JWT_EDDSA   3

#define NGX_HTTP_COLLAB_JWT_RSA_MIN_BITS  2048

/* JWS ES256 signature: R and S, 32 bytes each (RFC 7518 3.4) */
#define NGX_HTTP_COLLAB_JWT_ES256_SIG     64

/* DER of an ECDSA-Sig-Value with two 33-byte INTEGERs is 72 bytes */
#define NGX_HTTP_COLLAB_JWT_ES256_DER     80


typedef struct {
    const char                       *name;       /* JWS "alg" */
    unsigned                          type;
    const EVP_MD                   *(*md)(void);  /* NULL for EdDSA */
    size_t                            min_secret; /* HMAC: hash size */
    const char                       *short_err;
} ngx_http_collab_jwt_alg_t;


typedef struct {
    const ngx_http_collab_jwt_alg_t  *alg;
    char                             *kid;        /* NULL: no kid */
    size_t                            kid_len;
    unsigned char                    *secret;     /* HMAC */
    size_t                            secret_len;
    EVP_PKEY                         *pkey;       /* the others */
} ngx_http_collab_jwt_key_t;


struct ngx_http_collab_jwt_keys_s {
    ngx_http_collab_jwt_key_t        *key;
    size_t                            nkeys;
    size_t                            nalloc;
};


static const ngx_http_collab_jwt_alg_t *ngx_http_collab_jwt_alg(
    const char *name, int config);
static int ngx_http_collab_jwt_kid_check(ngx_http_collab_jwt_keys_t *keys,
    const ngx_http_collab_jwt_alg_t *a, const char *kid, size_t *kid_len,
    const char **err);
static int ngx_http_collab_jwt_secret_load(ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const char **err);
static int ngx_http_collab_jwt_pkey_load(ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const char **err);
static int ngx_http_collab_jwt_key_store(ngx_http_collab_jwt_keys_t *keys,
    ngx_http_collab_jwt_key_t *key, const char *kid, size_t kid_len,
    const char **err);
static void ngx_http_collab_jwt_key_clear(ngx_http_collab_jwt_key_t *key);
static int ngx_http_collab_jwt_key_check(const ngx_http_collab_jwt_alg_t *alg,
    EVP_PKEY *pkey, const char **err);
static EVP_PKEY *ngx_http_collab_jwt_pem_load(const unsigned char *data,
    size_t len);
static int ngx_http_collab_jwt_no_password(char *buf, int size, int rwflag,
    void *u);
static int ngx_http_collab_jwt_has(const unsigned char *data, size_t len,
    const char *s);
static int ngx_http_collab_jwt_split(const unsigned char *t, size_t len,
    size_t *dot);
static const ngx_http_collab_jwt_key_t *ngx_http_collab_jwt_header(
    ngx_http_collab_jwt_keys_t *keys, const unsigned char *src, size_t len,
    unsigned char *buf, const char **err);
static json_t *ngx_http_collab_jwt_claims(const unsigned char *src,
    size_t len, unsigned char *buf, long long now,
    const ngx_http_collab_jwt_opts_t *opts, const char **err);
static int ngx_http_collab_jwt_b64url_decode(const unsigned char *src,
    size_t len, unsigned char *dst, size_t *out);
static json_t *ngx_http_collab_jwt_json(const unsigned char *src,
    size_t len);
static const ngx_http_collab_jwt_key_t *ngx_http_collab_jwt_key_find(
    ngx_http_collab_jwt_keys_t *keys, const ngx_http_collab_jwt_alg_t *alg,
    json_t *kid, const char **err);
static int ngx_http_collab_jwt_sig_check(const ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const unsigned char *sig,
    size_t siglen, const char **err);
static int ngx_http_collab_jwt_hmac_check(
    const ngx_http_collab_jwt_key_t *key, const unsigned char *data,
    size_t len, const unsigned char *sig, size_t siglen, const char **err);
static int ngx_http_collab_jwt_ecdsa_der(const unsigned char *sig,
    unsigned char *der, size_t *der_len);
static int ngx_http_collab_jwt_claims_check(json_t *claims, long long now,
    const ngx_http_collab_jwt_opts_t *opts, const char **err);
static int ngx_http_collab_jwt_str_eq(json_t *v, const char *s);


static const ngx_http_collab_jwt_alg_t  ngx_http_collab_jwt_algs[] = {
    { "HS256", NGX_HTTP_COLLAB_JWT_HMAC, EVP_sha256, 32,
      "hs256 secret shorter than 32 bytes (RFC 7518 3.2)" },
    { "HS384", NGX_HTTP_COLLAB_JWT_HMAC, EVP_sha384, 48,
      "hs384 secret shorter than 48 bytes (RFC 7518 3.2)" },
    { "HS512", NGX_HTTP_COLLAB_JWT_HMAC, EVP_sha512, 64,
      "hs512 secret shorter than 64 bytes (RFC 7518 3.2)" },
    { "RS256", NGX_HTTP_COLLAB_JWT_RSA, EVP_sha256, 0, NULL },
    { "ES256", NGX_HTTP_COLLAB_JWT_EC, EVP_sha256, 0, NULL },
    { "EdDSA", NGX_HTTP_COLLAB_JWT_EDDSA, NULL, 0, NULL }
};

#define NGX_HTTP_COLLAB_JWT_NALGS                                             \
    (sizeof(ngx_http_collab_jwt_algs) / sizeof(ngx_http_collab_jwt_alg_t))


ngx_http_collab_jwt_keys_t *
ngx_http_collab_jwt_keys_create(void)
{
    return calloc(1, sizeof(ngx_http_collab_jwt_keys_t));
}


void
ngx_http_collab_jwt_keys_free(ngx_http_collab_jwt_keys_t *keys)
{
    size_t  i;

    if (keys == NULL) {
        return;
    }

    for (i = 0; i < keys->nkeys; i++) {
        ngx_http_collab_jwt_key_clear(&keys->key[i]);
    }

    free(keys->key);
    free(keys);
}


size_t
ngx_http_collab_jwt_keys_count(ngx_http_collab_jwt_keys_t *keys)
{
    return keys ? keys->nkeys : 0;
}


int
ngx_http_collab_jwt_key_add(ngx_http_collab_jwt_keys_t *keys,
    const char *alg, const char *kid, const unsigned char *data, size_t len,
    const char **err)
{
    int                               rc;
    size_t                            kid_len;
    ngx_http_collab_jwt_key_t         key;
    const ngx_http_collab_jwt_alg_t  *a;

    if (keys == NULL || alg == NULL || (data == NULL && len)) {
        *err = "invalid arguments";
        return -1;
    }

    a = ngx_http_collab_jwt_alg(alg, 1);
    if (a == NULL) {
        *err = "unknown algorithm, expected hs256, hs384, hs512, rs256, "
               "es256 or eddsa";
        return -1;
    }

    if (ngx_http_collab_jwt_kid_check(keys, a, kid, &kid_len, err) != 0) {
        return -1;
    }

    if (len > NGX_HTTP_COLLAB_JWT_MAX_KEY) {
        *err = "key data too large";
        return -1;
    }

    memset(&key, 0, sizeof(ngx_http_collab_jwt_key_t));
    key.alg = a;

    ERR_set_mark();

    if (a->type == NGX_HTTP_COLLAB_JWT_HMAC) {
        rc = ngx_http_collab_jwt_secret_load(&key, data, len, err);

    } else {
        rc = ngx_http_collab_jwt_pkey_load(&key, data, len, err);
    }

    if (rc == 0) {
        rc = ngx_http_collab_jwt_key_store(keys, &key, kid, kid_len, err);
    }

    if (rc != 0) {
        ngx_http_collab_jwt_key_clear(&key);
    }

    ERR_pop_to_mark();

    return rc;
}


/* one key without a kid per algorithm, and no kid twice */

static int
ngx_http_collab_jwt_kid_check(ngx_http_collab_jwt_keys_t *keys,
    const ngx_http_collab_jwt_alg_t *a, const char *kid, size_t *kid_len,
    const char **err)
{
    size_t                      i;
    ngx_http_collab_jwt_key_t  *k;

    *kid_len = 0;

    if (kid) {
        *kid_len = strlen(kid);

        if (*kid_len == 0) {
            *err = "empty kid";
            return -1;
        }

        if (*kid_len > NGX_HTTP_COLLAB_JWT_MAX_KID) {
            *err = "kid too long";
            return -1;
        }
    }

    for (i = 0; i < keys->nkeys; i++) {
        k = &keys->key[i];

        if (kid && k->kid && strcmp(k->kid, kid) == 0) {
            *err = "duplicate kid";
            return -1;
        }

        if (kid == NULL && k->kid == NULL && k->alg == a) {
            *err = "another key of this algorithm has no kid";
            return -1;
        }
    }

    return 0;
}


static int
ngx_http_collab_jwt_secret_load(ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const char **err)
{
    size_t  i, n;

    /*
     * the newline of "echo secret > file" is not part of a text
     * secret; a binary secret may end in 0x0a and is kept as it is
     */
    if (len && data[len - 1] == '\n') {
        n = len - 1;

        if (n && data[n - 1] == '\r') {
            n--;
        }

        for (i = 0; i < n; i++) {
            if (data[i] < 0x20 || data[i] > 0x7e) {
                break;
            }
        }

        if (i == n) {
            len = n;
        }
    }

    if (len < key->alg->min_secret) {
        *err = key->alg->short_err;
        return -1;
    }

    /*
     * a public key configured as a secret is the very algorithm
     * confusion this module otherwise prevents: anybody could sign
     */
    if (ngx_http_collab_jwt_has(data, len, "-----BEGIN")) {
        *err = "hs* key is a PEM object, not an HMAC secret";
        return -1;
    }

    key->secret = malloc(len);
    if (key->secret == NULL) {
        *err = "out of memory";
        return -1;
    }

    memcpy(key->secret, data, len);
    key->secret_len = len;

    return 0;
}


static int
ngx_http_collab_jwt_pkey_load(ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const char **err)
{
    key->pkey = ngx_http_collab_jwt_pem_load(data, len);
    if (key->pkey == NULL) {
        *err = "no PEM public key or certificate found";
        return -1;
    }

    return ngx_http_collab_jwt_key_check(key->alg, key->pkey, err);
}


/* the key, with a copy of its kid, becomes the last of keys */

static int
ngx_http_collab_jwt_key_store(ngx_http_collab_jwt_keys_t *keys,
    ngx_http_collab_jwt_key_t *key, const char *kid, size_t kid_len,
    const char **err)
{
    size_t                      n;
    ngx_http_collab_jwt_key_t  *k;

    if (kid) {
        key->kid = malloc(kid_len + 1);
        if (key->kid == NULL) {
            *err = "out of memory";
            return -1;
        }

        memcpy(key->kid, kid, kid_len + 1);
        key->kid_len = kid_len;
    }

    if (keys->nkeys == keys->nalloc) {
        n = keys->nalloc ? 2 * keys->nalloc : 4;

        k = realloc(keys->key, n * sizeof(ngx_http_collab_jwt_key_t));
        if (k == NULL) {
            *err = "out of memory";
            return -1;
        }

        keys->key = k;
        keys->nalloc = n;
    }

    keys->key[keys->nkeys++] = *key;

    return 0;
}


static void
ngx_http_collab_jwt_key_clear(ngx_http_collab_jwt_key_t *key)
{
    free(key->kid);

    if (key->secret) {
        OPENSSL_cleanse(key->secret, key->secret_len);
        free(key->secret);
    }

    EVP_PKEY_free(key->pkey);
}


/* config names are case-insensitive, JWS "alg" values are not (RFC 7515) */

static const ngx_http_collab_jwt_alg_t *
ngx_http_collab_jwt_alg(const char *name, int config)
{
    size_t  i;

    for (i = 0; i < NGX_HTTP_COLLAB_JWT_NALGS; i++) {
        if (config ? strcasecmp(ngx_http_collab_jwt_algs[i].name, name) == 0
                   : strcmp(ngx_http_collab_jwt_algs[i].name, name) == 0)
        {
            return &ngx_http_collab_jwt_algs[i];
        }
    }

    return NULL;
}


static int
ngx_http_collab_jwt_key_check(const ngx_http_collab_jwt_alg_t *alg,
    EVP_PKEY *pkey, const char **err)
{
    char    group[64];
    size_t  n;

    switch (alg->type) {

    case NGX_HTTP_COLLAB_JWT_RSA:
        if (!EVP_PKEY_is_a(pkey, "RSA")) {
            *err = "rs256 needs an RSA public key";
            return -1;
        }

        if (EVP_PKEY_get_bits(pkey) < NGX_HTTP_COLLAB_JWT_RSA_MIN_BITS) {
            *err = "RSA key shorter than 2048 bits";
            return -1;
        }

        return 0;

    case NGX_HTTP_COLLAB_JWT_EC:
        if (!EVP_PKEY_is_a(pkey, "EC")
            || EVP_PKEY_get_group_name(pkey, group, sizeof(group), &n) != 1
            || OBJ_txt2nid(group) != NID_X9_62_prime256v1)
        {
            *err = "es256 needs an EC public key on P-256";
            return -1;
        }

        return 0;

    default: /* NGX_HTTP_COLLAB_JWT_EDDSA */
        if (!EVP_PKEY_is_a(pkey, "ED25519") && !EVP_PKEY_is_a(pkey, "ED448"))
        {
            *err = "eddsa needs an Ed25519 or Ed448 public key";
            return -1;
        }

        return 0;
    }
}


static EVP_PKEY *
ngx_http_collab_jwt_pem_load(const unsigned char *data, size_t len)
{
    BIO       *bio;
    X509      *x509;
    EVP_PKEY  *pkey;

    bio = BIO_new_mem_buf(data, (int) len);
    if (bio == NULL) {
        return NULL;
    }

    pkey = PEM_read_bio_PUBKEY(bio, NULL, ngx_http_collab_jwt_no_password,
                               NULL);
    BIO_free(bio);

    if (pkey) {
        return pkey;
    }

    bio = BIO_new_mem_buf(data, (int) len);
    if (bio == NULL) {
        return NULL;
    }

    x509 = PEM_read_bio_X509(bio, NULL, ngx_http_collab_jwt_no_password,
                             NULL);
    BIO_free(bio);

    if (x509 == NULL) {
        return NULL;
    }

    pkey = X509_get_pubkey(x509);
    X509_free(x509);

    return pkey;
}


/* never prompt on the terminal of "nginx -t" */

static int
ngx_http_collab_jwt_no_password(char *buf, int size, int rwflag, void *u)
{
    (void) buf;
    (void) size;
    (void) rwflag;
    (void) u;

    return 0;
}


static int
ngx_http_collab_jwt_has(const unsigned char *data, size_t len, const char *s)
{
    size_t  i, n;

    n = strlen(s);

    for (i = 0; i + n <= len; i++) {
        if (memcmp(data + i, s, n) == 0) {
            return 1;
        }
    }

    return 0;
}


int
ngx_http_collab_jwt_verify(ngx_http_collab_jwt_keys_t *keys,
    const char *token, size_t len, long long now,
    const ngx_http_collab_jwt_opts_t *opts, json_t **claims,
    const char **err)
{
    int                               rc;
    size_t                            dot[2], n;
    const unsigned char              *t;
    const ngx_http_collab_jwt_key_t  *key;
    unsigned char                     buf[NGX_HTTP_COLLAB_JWT_MAX_TOKEN];

    *claims = NULL;

    if (keys == NULL || (token == NULL && len)) {
        *err = "internal error";
        return -1;
    }

    if (len > NGX_HTTP_COLLAB_JWT_MAX_TOKEN) {
        *err = "token too long";
        return -1;
    }

    t = (const unsigned char *) token;

    if (ngx_http_collab_jwt_split(t, len, dot) != 0) {
        *err = "malformed token";
        return -1;
    }

    rc = -1;

    ERR_set_mark();

    key = ngx_http_collab_jwt_header(keys, t, dot[0], buf, err);
    if (key == NULL) {
        goto done;
    }

    /* the signature, over the ASCII of header.payload */

    if (ngx_http_collab_jwt_b64url_decode(t + dot[1] + 1, len - dot[1] - 1,
                                          buf, &n)
        != 0)
    {
        *err = "malformed token";
        goto done;
    }

    if (ngx_http_collab_jwt_sig_check(key, t, dot[1], buf, n, err) != 0) {
        goto done;
    }

    /* the claims are parsed only once the signature holds */

    *claims = ngx_http_collab_jwt_claims(t + dot[0] + 1, dot[1] - dot[0] - 1,
                                         buf, now, opts, err);
    if (*claims) {
        rc = 0;
    }

done:

    ERR_pop_to_mark();

    return rc;
}


/* header.payload.signature: the offsets of the two dots */

static int
ngx_http_collab_jwt_split(const unsigned char *t, size_t len, size_t *dot)
{
    size_t  i, ndots;

    ndots = 0;

    for (i = 0; i < len; i++) {
        if (t[i] == '.') {
            if (ndots == 2) {
                return -1;
            }

            dot[ndots++] = i;
        }
    }

    return (ndots == 2) ? 0 : -1;
}


/*
 * The header: a JSON object with "alg", and "kid" and "typ" strings; the
 * key it names.  buf holds the decoded header.
 */

static const ngx_http_collab_jwt_key_t *
ngx_http_collab_jwt_header(ngx_http_collab_jwt_keys_t *keys,
    const unsigned char *src, size_t len, unsigned char *buf,
    const char **err)
{
    size_t                            n;
    json_t                           *header, *v, *kid;
    const char                       *alg_name;
    const ngx_http_collab_jwt_alg_t  *alg;
    const ngx_http_collab_jwt_key_t  *key;

    if (ngx_http_collab_jwt_b64url_decode(src, len, buf, &n) != 0) {
        *err = "malformed token";
        return NULL;
    }

    header = ngx_http_collab_jwt_json(buf, n);
    if (header == NULL) {
        *err = "malformed header";
        return NULL;
    }

    key = NULL;

    v = json_object_get(header, "alg");
    if (!json_is_string(v)) {
        *err = "malformed header";
        goto done;
    }

    alg_name = json_string_value(v);

    if (strcasecmp(alg_name, "none") == 0) {
        *err = "alg none rejected";
        goto done;
    }

    alg = ngx_http_collab_jwt_alg(alg_name, 0);
    if (alg == NULL) {
        *err = "unsupported algorithm";
        goto done;
    }

    kid = json_object_get(header, "kid");
    v = json_object_get(header, "typ");

    if ((kid && !json_is_string(kid)) || (v && !json_is_string(v))) {
        *err = "malformed header";
        goto done;
    }

    /* RFC 7515 4.1.11: extensions not understood must be rejected */
    if (json_object_get(header, "crit")) {
        *err = "unsupported crit header";
        goto done;
    }

    key = ngx_http_collab_jwt_key_find(keys, alg, kid, err);

done:

    json_decref(header);

    return key;
}


/* the payload: a JSON object whose claims hold now; buf holds it decoded */

static json_t *
ngx_http_collab_jwt_claims(const unsigned char *src, size_t len,
    unsigned char *buf, long long now, const ngx_http_collab_jwt_opts_t *opts,
    const char **err)
{
    size_t   n;
    json_t  *payload;

    if (ngx_http_collab_jwt_b64url_decode(src, len, buf, &n) != 0) {
        *err = "malformed token";
        return NULL;
    }

    payload = ngx_http_collab_jwt_json(buf, n);
    if (payload == NULL) {
        *err = "malformed claims";
        return NULL;
    }

    if (ngx_http_collab_jwt_claims_check(payload, now, opts, err) != 0) {
        json_decref(payload);
        return NULL;
    }

    return payload;
}


/*
 * Strict base64url (RFC 7515 2): no padding, no whitespace, and the unused
 * low bits of the last character must be zero, so that a value has exactly
 * one encoding and a token cannot be altered without breaking it.
 */

static int
ngx_http_collab_jwt_b64url_decode(const unsigned char *src, size_t len,
    unsigned char *dst, size_t *out)
{
    size_t    i, n;
    unsigned  c, v, acc, bits;

    if (len % 4 == 1) {
        return -1;
    }

    n = 0;
    acc = 0;
    bits = 0;

    for (i = 0; i < len; i++) {
        c = src[i];

        if (c >= 'A' && c <= 'Z') {
            v = c - 'A';

        } else if (c >= 'a' && c <= 'z') {
            v = c - 'a' + 26;

        } else if (c >= '0' && c <= '9') {
            v = c - '0' + 52;

        } else if (c == '-') {
            v = 62;

        } else if (c == '_') {
            v = 63;

        } else {
            return -1;
        }

        acc = (acc << 6) | v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (unsigned char) (acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }

    if (acc != 0) {
        return -1;
    }

    *out = n;

    return 0;
}


/* an object without duplicate names (which one would count?) */

static json_t *
ngx_http_collab_jwt_json(const unsigned char *src, size_t len)
{
    json_t  *j;

    j = json_loadb((const char *) src, len, JSON_REJECT_DUPLICATES, NULL);

    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }

    return j;
}


static const ngx_http_collab_jwt_key_t *
ngx_http_collab_jwt_key_find(ngx_http_collab_jwt_keys_t *keys,
    const ngx_http_collab_jwt_alg_t *alg, json_t *kid, const char **err)
{
    size_t                      i, nalg, len;
    const char                 *s;
    ngx_http_collab_jwt_key_t  *k, *kidless, *last;

    nalg = 0;
    kidless = NULL;
    last = NULL;

    for (i = 0; i < keys->nkeys; i++) {
        k = &keys->key[i];

        if (k->alg == alg) {
            nalg++;
            last = k;

            if (k->kid == NULL) {
                kidless = k;
            }
        }
    }

    if (kid) {
        s = json_string_value(kid);
        len = json_string_length(kid);

        for (i = 0; i < keys->nkeys; i++) {
            k = &keys->key[i];

            if (k->kid && k->kid_len == len && memcmp(k->kid, s, len) == 0) {

                if (k->alg != alg) {
                    *err = "algorithm mismatch";
                    return NULL;
                }

                return k;
            }
        }

        if (nalg == 1 && kidless) {
            return kidless;
        }

        *err = "unknown kid";
        return NULL;
    }

    if (kidless) {
        return kidless;
    }

    if (nalg == 1) {
        return last;
    }

    *err = nalg ? "kid required" : "algorithm mismatch";

    return NULL;
}


static int
ngx_http_collab_jwt_sig_check(const ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const unsigned char *sig,
    size_t siglen, const char **err)
{
    int            rc;
    size_t         der_len;
    EVP_MD_CTX    *ctx;
    EVP_PKEY_CTX  *pctx;
    unsigned char  der[NGX_HTTP_COLLAB_JWT_ES256_DER];

    if (key->alg->type == NGX_HTTP_COLLAB_JWT_HMAC) {
        return ngx_http_collab_jwt_hmac_check(key, data, len, sig, siglen,
                                              err);
    }

    if (key->alg->type == NGX_HTTP_COLLAB_JWT_EC) {

        /* JWS carries R||S, OpenSSL wants an ECDSA-Sig-Value in DER */

        if (siglen != NGX_HTTP_COLLAB_JWT_ES256_SIG) {
            *err = "bad signature";
            return -1;
        }

        if (ngx_http_collab_jwt_ecdsa_der(sig, der, &der_len) != 0) {
            *err = "internal error";
            return -1;
        }

        sig = der;
        siglen = der_len;

    } else if (key->alg->type == NGX_HTTP_COLLAB_JWT_RSA
               && siglen != (size_t) EVP_PKEY_get_size(key->pkey))
    {
        *err = "bad signature";
        return -1;
    }

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        *err = "internal error";
        return -1;
    }

    pctx = NULL;

    if (EVP_DigestVerifyInit(ctx, &pctx, key->alg->md ? key->alg->md() : NULL,
                             NULL, key->pkey)
        != 1
        || (key->alg->type == NGX_HTTP_COLLAB_JWT_RSA
            && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0))
    {
        EVP_MD_CTX_free(ctx);
        *err = "internal error";
        return -1;
    }

    rc = EVP_DigestVerify(ctx, sig, siglen, data, len);

    EVP_MD_CTX_free(ctx);

    if (rc != 1) {
        *err = "bad signature";
        return -1;
    }

    return 0;
}


static int
ngx_http_collab_jwt_hmac_check(const ngx_http_collab_jwt_key_t *key,
    const unsigned char *data, size_t len, const unsigned char *sig,
    size_t siglen, const char **err)
{
    int            rc;
    unsigned int   mac_len;
    unsigned char  mac[EVP_MAX_MD_SIZE];

    if (HMAC(key->alg->md(), key->secret, (int) key->secret_len, data, len,
             mac, &mac_len)
        == NULL)
    {
        *err = "internal error";
        return -1;
    }

    /* the length is public, the content is compared in constant time */
    rc = (siglen == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0) ? 0 : -1;

    /* the valid MAC of whatever the client sent must not linger */
    OPENSSL_cleanse(mac, sizeof(mac));

    if (rc != 0) {
        *err = "bad signature";
    }

    return rc;
}


static int
ngx_http_collab_jwt_ecdsa_der(const unsigned char *sig, unsigned char *der,
    size_t *der_len)
{
    int             n;
    BIGNUM         *r, *s;
    ECDSA_SIG      *es;
    unsigned char  *p;

    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, NGX_HTTP_COLLAB_JWT_ES256_SIG / 2, NULL);
    s = BN_bin2bn(sig + NGX_HTTP_COLLAB_JWT_ES256_SIG / 2,
                  NGX_HTTP_COLLAB_JWT_ES256_SIG / 2, NULL);

    if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1)
    {
        ECDSA_SIG_free(es);
        BN_free(r);
        BN_free(s);
        return -1;
    }

    /* es owns r and s now */

    n = i2d_ECDSA_SIG(es, NULL);

    if (n <= 0 || n > NGX_HTTP_COLLAB_JWT_ES256_DER) {
        ECDSA_SIG_free(es);
        return -1;
    }

    p = der;
    n = i2d_ECDSA_SIG(es, &p);

    ECDSA_SIG_free(es);

    if (n <= 0) {
        return -1;
    }

    *der_len = (size_t) n;

    return 0;
}


/*
 * NumericDate values may be integers or reals; doubles hold every time of
 * interest exactly, and jansson never yields NaN or infinities.
 */

static int
ngx_http_collab_jwt_claims_check(json_t *claims, long long now,
    const ngx_http_collab_jwt_opts_t *opts, const char **err)
{
    size_t   i;
    double   leeway;
    json_t  *v, *a;

    leeway = (opts && opts->leeway > 0) ? (double) opts->leeway : 0;

    v = json_object_get(claims, "exp");

    if (v) {
        if (!json_is_number(v)) {
            *err = "malformed exp";
            return -1;
        }

        /* RFC 7519 4.1.4: not accepted on or after exp */
        if ((double) now - leeway >= json_number_value(v)) {
            *err = "expired";
            return -1;
        }
    }

    v = json_object_get(claims, "nbf");

    if (v) {
        if (!json_is_number(v)) {
            *err = "malformed nbf";
            return -1;
        }

        if ((double) now + leeway < json_number_value(v)) {
            *err = "not yet valid";
            return -1;
        }
    }

    v = json_object_get(claims, "iat");

    if (v && !json_is_number(v)) {
        *err = "malformed iat";
        return -1;
    }

    if (opts && opts->iss) {
        v = json_object_get(claims, "iss");

        if (!json_is_string(v) || !ngx_http_collab_jwt_str_eq(v, opts->iss)) {
            *err = "bad issuer";
            return -1;
        }
    }

    if (opts && opts->aud) {
        v = json_object_get(claims, "aud");

        if (json_is_string(v)) {
            if (ngx_http_collab_jwt_str_eq(v, opts->aud)) {
                return 0;
            }

        } else if (json_is_array(v)) {
            json_array_foreach(v, i, a) {
                if (json_is_string(a)
                    && ngx_http_collab_jwt_str_eq(a, opts->aud))
                {
                    return 0;
                }
            }
        }

        *err = "bad audience";
        return -1;
    }

    return 0;
}


static int
ngx_http_collab_jwt_str_eq(json_t *v, const char *s)
{
    size_t  len;

    len = strlen(s);

    return json_string_length(v) == len
           && memcmp(json_string_value(v), s, len) == 0;
}
