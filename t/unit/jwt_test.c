
/*
 * Copyright (C) ngx_collab_module authors
 */

/*
 * Unit tests of the JWT verifier; TAP output.
 *
 * Keys are generated here with the OpenSSL API (RSA 2048, P-256, Ed25519,
 * Ed448, random HMAC secrets) and tokens signed with them by code that
 * shares nothing with the verifier: its own base64url encoder, and
 * OpenSSL's DER -> R||S path for ES256.  The RFC 7515 appendix A and
 * RFC 8037 appendix A.4 tokens check the verifier against answers made
 * elsewhere.
 */


#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "ngx_http_collab_jwt.h"


#define NOW      1800000000LL
#define RFC_NOW  1300819000LL   /* before the RFC 7515 tokens' exp */

#define OK       NULL           /* expected error: none */


typedef struct {
    const char      *alg;       /* JWS alg the signer produces */
    EVP_PKEY        *pkey;
    unsigned char   *secret;
    size_t           secret_len;
    int              pss;       /* RS256 signer that pads with PSS */
    int              der;       /* ES256 signer that keeps the DER form */
} signer_t;


static int     test_no;
static int     test_failed;

static void  **garbage;
static size_t  ngarbage;


/* every string the verifier may answer with (ngx_http_collab_jwt.h) */
static const char  *errors[] = {
    "token too long", "malformed token", "malformed header",
    "alg none rejected", "unsupported algorithm", "unsupported crit header",
    "unknown kid", "kid required", "algorithm mismatch", "bad signature",
    "malformed claims", "malformed exp", "malformed nbf", "malformed iat",
    "expired", "not yet valid", "bad issuer", "bad audience",
    "internal error", NULL
};


/* RFC 7515 A.1 */

static const unsigned char  rfc_hs256_key[] = {
    0x03, 0x23, 0x35, 0x4b, 0x2b, 0x0f, 0xa5, 0xbc, 0x83, 0x7e, 0x06, 0x65,
    0x77, 0x7b, 0xa6, 0x8f, 0x5a, 0xb3, 0x28, 0xe6, 0xf0, 0x54, 0xc9, 0x28,
    0xa9, 0x0f, 0x84, 0xb2, 0xd2, 0x50, 0x2e, 0xbf, 0xd3, 0xfb, 0x5a, 0x92,
    0xd2, 0x06, 0x47, 0xef, 0x96, 0x8a, 0xb4, 0xc3, 0x77, 0x62, 0x3d, 0x22,
    0x3d, 0x2e, 0x21, 0x72, 0x05, 0x2e, 0x4f, 0x08, 0xc0, 0xcd, 0x9a, 0xf5,
    0x67, 0xd0, 0x80, 0xa3
};

static const char  *rfc_hs256 =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";


/* RFC 7515 A.2: the JWK's n and e as a PEM public key */

static const char  *rfc_rs256_pem =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAofgWCuLjybRlzo0tZWJj\n"
    "NiuSfb4p4fAkd/wWJcyQoTbji9k0l8W26mPddxHmfHQp+Vaw+4qPCJrcS2mJPMEz\n"
    "P1Pt0Bm4d4QlL+yRT+SFd2lZS+pCgNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo\n"
    "9wGzjb/7OMg0LOL+bSf63kpaSHSXndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTB\n"
    "EMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6/I5IhlJH7aGhyxX\n"
    "FvUK+DWNmoudF8NAco9/h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXp\n"
    "oQIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

static const char  *rfc_rs256 =
    "eyJhbGciOiJSUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4"
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv"
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB"
    "p0igcN_IoypGlUPQGe77Rw";


/* RFC 7515 A.3: the JWK's x and y as a PEM public key */

static const char  *rfc_es256_pem =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7\n"
    "6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n"
    "-----END PUBLIC KEY-----\n";

static const char  *rfc_es256 =
    "eyJhbGciOiJFUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA"
    "pmWQxfKTUJqPP3-Kg6NU1Q";


/* RFC 8037 A.4: Ed25519 over the sentence "Example of Ed25519 signing" */

static const char  *rfc_eddsa_pem =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n"
    "-----END PUBLIC KEY-----\n";

static const char  *rfc_eddsa =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5Bh"
    "VsPt9g7sVvpAr_MuM0KAg";


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
    fflush(stdout);
}


static void
die(const char *what)
{
    fprintf(stderr, "jwt_test: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}


/* test allocations live until the end of main() */

static void *
keep(void *p)
{
    void  **g;

    if (p == NULL) {
        die("out of memory");
    }

    g = realloc(garbage, (ngarbage + 1) * sizeof(void *));
    if (g == NULL) {
        die("out of memory");
    }

    garbage = g;
    garbage[ngarbage++] = p;

    return p;
}


static char *
fmt(const char *f, ...)
{
    int       n;
    char     *s;
    va_list   ap;

    va_start(ap, f);
    n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);

    s = keep(malloc(n + 1));

    va_start(ap, f);
    vsnprintf(s, n + 1, f, ap);
    va_end(ap);

    return s;
}


static char *
b64url(const unsigned char *p, size_t len)
{
    int       n;
    char     *s;
    size_t    i, j;

    /* EVP_EncodeBlock() writes standard base64 with padding */
    s = keep(malloc(4 * ((len + 2) / 3) + 1));
    n = EVP_EncodeBlock((unsigned char *) s, p, (int) len);

    for (i = 0, j = 0; i < (size_t) n; i++) {
        if (s[i] == '=') {
            break;
        }

        s[j++] = (s[i] == '+') ? '-' : (s[i] == '/') ? '_' : s[i];
    }

    s[j] = '\0';

    return s;
}


static char *
b64s(const char *s)
{
    return b64url((const unsigned char *) s, strlen(s));
}


static char *
pem_of(EVP_PKEY *pkey)
{
    BIO   *bio;
    char  *p, *s;
    long   n;

    bio = BIO_new(BIO_s_mem());

    if (bio == NULL || PEM_write_bio_PUBKEY(bio, pkey) != 1) {
        die("PEM_write_bio_PUBKEY");
    }

    n = BIO_get_mem_data(bio, &p);
    s = keep(malloc(n + 1));
    memcpy(s, p, n);
    s[n] = '\0';

    BIO_free(bio);

    return s;
}


static char *
cert_of(EVP_PKEY *pkey)
{
    BIO        *bio;
    X509       *x;
    char       *p, *s;
    long        n;
    X509_NAME  *name;

    x = X509_new();

    if (x == NULL
        || X509_set_version(x, 2) != 1
        || ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1
        || X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL
        || X509_gmtime_adj(X509_getm_notAfter(x), 3600) == NULL
        || X509_set_pubkey(x, pkey) != 1)
    {
        die("X509");
    }

    name = X509_get_subject_name(x);

    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   (const unsigned char *) "jwt test",
                                   -1, -1, 0)
        != 1
        || X509_set_issuer_name(x, name) != 1
        || X509_sign(x, pkey, EVP_sha256()) <= 0)
    {
        die("X509_sign");
    }

    bio = BIO_new(BIO_s_mem());

    if (bio == NULL || PEM_write_bio_X509(bio, x) != 1) {
        die("PEM_write_bio_X509");
    }

    n = BIO_get_mem_data(bio, &p);
    s = keep(malloc(n + 1));
    memcpy(s, p, n);
    s[n] = '\0';

    BIO_free(bio);
    X509_free(x);

    return s;
}


static char *
priv_pem_of(EVP_PKEY *pkey)
{
    BIO   *bio;
    char  *p, *s;
    long   n;

    bio = BIO_new(BIO_s_mem());

    if (bio == NULL
        || PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL)
           != 1)
    {
        die("PEM_write_bio_PrivateKey");
    }

    n = BIO_get_mem_data(bio, &p);
    s = keep(malloc(n + 1));
    memcpy(s, p, n);
    s[n] = '\0';

    BIO_free(bio);

    return s;
}


static unsigned char *
random_secret(size_t len)
{
    unsigned char  *s;

    s = keep(malloc(len));

    if (RAND_bytes(s, (int) len) != 1) {
        die("RAND_bytes");
    }

    return s;
}


static char *
sign(const signer_t *sg, const char *input)
{
    size_t          n, der_len;
    EVP_MD_CTX     *ctx;
    EVP_PKEY_CTX   *pctx;
    const EVP_MD   *md;
    ECDSA_SIG      *es;
    const BIGNUM   *r, *s;
    unsigned int    mac_len;
    const unsigned char  *p;
    unsigned char   sig[1024], der[256];

    if (strncmp(sg->alg, "HS", 2) == 0) {
        md = strcmp(sg->alg, "HS256") == 0 ? EVP_sha256()
             : strcmp(sg->alg, "HS384") == 0 ? EVP_sha384() : EVP_sha512();

        if (HMAC(md, sg->secret, (int) sg->secret_len,
                 (const unsigned char *) input, strlen(input), sig, &mac_len)
            == NULL)
        {
            die("HMAC");
        }

        return b64url(sig, mac_len);
    }

    ctx = EVP_MD_CTX_new();
    md = strcmp(sg->alg, "EdDSA") == 0 ? NULL : EVP_sha256();

    if (ctx == NULL
        || EVP_DigestSignInit(ctx, &pctx, md, NULL, sg->pkey) != 1)
    {
        die("EVP_DigestSignInit");
    }

    if (sg->pss
        && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0
            || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) <= 0))
    {
        die("PSS");
    }

    n = sizeof(der);

    if (EVP_DigestSign(ctx, der, &n, (const unsigned char *) input,
                       strlen(input))
        != 1)
    {
        die("EVP_DigestSign");
    }

    EVP_MD_CTX_free(ctx);

    if (strcmp(sg->alg, "ES256") != 0 || sg->der) {
        return b64url(der, n);
    }

    /* JWS wants R||S, each left-padded to 32 bytes */

    der_len = n;
    p = der;

    es = d2i_ECDSA_SIG(NULL, &p, (long) der_len);
    if (es == NULL) {
        die("d2i_ECDSA_SIG");
    }

    ECDSA_SIG_get0(es, &r, &s);

    if (BN_bn2binpad(r, sig, 32) != 32 || BN_bn2binpad(s, sig + 32, 32) != 32)
    {
        die("BN_bn2binpad");
    }

    ECDSA_SIG_free(es);

    return b64url(sig, 64);
}


static char *
token(const signer_t *sg, const char *header, const char *payload)
{
    char  *input;

    input = fmt("%s.%s", b64s(header), b64s(payload));

    if (sg == NULL) {
        return fmt("%s.", input);
    }

    return fmt("%s.%s", input, sign(sg, input));
}


static int
known_error(const char *err)
{
    int  i;

    for (i = 0; errors[i]; i++) {
        if (err == errors[i] || (err && strcmp(err, errors[i]) == 0)) {
            return 1;
        }
    }

    return 0;
}


/*
 * Runs the verifier; want is the expected error or OK.  Returns the claims
 * of a success (owned by the caller) for more checks, or NULL.
 */

static json_t *
check_len(ngx_http_collab_jwt_keys_t *keys, const char *tok, size_t len,
    long long now, const ngx_http_collab_jwt_opts_t *opts, const char *want,
    const char *name)
{
    int          rc;
    json_t      *claims;
    const char  *err;

    err = NULL;
    claims = (json_t *) 1;

    rc = ngx_http_collab_jwt_verify(keys, tok, len, now, opts, &claims, &err);

    if (want == OK) {
        ok(rc == 0 && claims != NULL && claims != (json_t *) 1, "%s", name);

        if (rc != 0) {
            diag("  got error \"%s\"", err ? err : "(null)");
            return NULL;
        }

        if (claims->refcount != 1) {
            ok(0, "%s: claims are a single new reference", name);
        }

        return claims;
    }

    ok(rc == -1 && claims == NULL && err && strcmp(err, want) == 0
       && known_error(err),
       "%s: %s", name, want);

    if (rc == 0) {
        diag("  verified, claims returned");
        json_decref(claims);

    } else if (err == NULL || strcmp(err, want) != 0) {
        diag("  got \"%s\"", err ? err : "(null)");
    }

    return NULL;
}


static void
check(ngx_http_collab_jwt_keys_t *keys, const char *tok, long long now,
    const ngx_http_collab_jwt_opts_t *opts, const char *want,
    const char *name)
{
    json_decref(check_len(keys, tok, strlen(tok), now, opts, want, name));
}


static void
check_sub(ngx_http_collab_jwt_keys_t *keys, const char *tok, long long now,
    const ngx_http_collab_jwt_opts_t *opts, const char *sub,
    const char *name)
{
    json_t  *claims;

    claims = check_len(keys, tok, strlen(tok), now, opts, OK, name);

    if (claims) {
        ok(json_is_string(json_object_get(claims, "sub"))
           && strcmp(json_string_value(json_object_get(claims, "sub")), sub)
              == 0,
           "%s: sub is %s", name, sub);

        json_decref(claims);
    }
}


static int
add(ngx_http_collab_jwt_keys_t *keys, const char *alg, const char *kid,
    const void *data, size_t len, const char **err)
{
    const char  *e;

    e = NULL;

    if (ngx_http_collab_jwt_key_add(keys, alg, kid, data, len, &e) != 0) {
        if (err) {
            *err = e;

        } else {
            diag("key_add(%s, %s): %s", alg, kid ? kid : "-", e);
            die("key_add");
        }

        return -1;
    }

    return 0;
}


static void
add_str(ngx_http_collab_jwt_keys_t *keys, const char *alg, const char *kid,
    const char *pem)
{
    add(keys, alg, kid, pem, strlen(pem), NULL);
}


static void
add_fails(ngx_http_collab_jwt_keys_t *keys, const char *alg, const char *kid,
    const void *data, size_t len, const char *name)
{
    int          rc;
    char        *prefix;
    size_t       n;
    const char  *err;

    err = NULL;
    n = ngx_http_collab_jwt_keys_count(keys);

    rc = add(keys, alg, kid, data, len, &err);

    ok(rc == -1 && err != NULL && ngx_http_collab_jwt_keys_count(keys) == n,
       "key_add refuses %s (%s)", name, err ? err : "no error");

    /* no key material in what may be logged */
    prefix = (len >= 8) ? fmt("%.8s", (const char *) data) : "";

    if (err && (strstr(err, "MII") || strstr(err, "BEGIN")
                || (strlen(prefix) == 8 && strstr(err, prefix))))
    {
        ok(0, "key_add error for %s names no key material", name);
    }
}


/* the token with the character at pos changed to another valid one */

static char *
changed_at(const char *tok, size_t pos)
{
    char  *s;

    s = fmt("%s", tok);
    s[pos] = (s[pos] == 'A') ? 'B' : 'A';

    return s;
}


/* no single-character change of a valid token may verify */

static void
mutations(ngx_http_collab_jwt_keys_t *keys, const char *tok, const char *name)
{
    int          rc, bad, unknown;
    char        *s;
    size_t       i, j, len;
    json_t      *claims;
    const char  *err;
    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";

    len = strlen(tok);
    s = fmt("%s", tok);
    bad = 0;
    unknown = 0;

    for (i = 0; i < len; i++) {
        for (j = 0; alphabet[j]; j++) {
            if (alphabet[j] == tok[i]) {
                continue;
            }

            s[i] = alphabet[j];

            rc = ngx_http_collab_jwt_verify(keys, s, len, NOW, NULL, &claims,
                                            &err);
            if (rc == 0) {
                json_decref(claims);

                if (bad++ == 0) {
                    diag("  verified with '%c' at %zu", alphabet[j], i);
                }

            } else if (!known_error(err)) {
                unknown++;
            }
        }

        s[i] = tok[i];
    }

    ok(bad == 0 && unknown == 0,
       "%s: no single-character change verifies (%d did, %d odd errors)",
       name, bad, unknown);
}


static void
test_rfc_vectors(void)
{
    json_t                      *claims;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = ngx_http_collab_jwt_keys_create();

    add(keys, "hs256", NULL, rfc_hs256_key, sizeof(rfc_hs256_key), NULL);
    add_str(keys, "rs256", NULL, rfc_rs256_pem);
    add_str(keys, "es256", NULL, rfc_es256_pem);
    add_str(keys, "eddsa", NULL, rfc_eddsa_pem);

    claims = check_len(keys, rfc_hs256, strlen(rfc_hs256), RFC_NOW, NULL, OK,
                       "RFC 7515 A.1 HS256 token verifies");

    if (claims) {
        ok(json_is_true(json_object_get(claims,
                                        "http://example.com/is_root"))
           && strcmp(json_string_value(json_object_get(claims, "iss")), "joe")
              == 0,
           "RFC 7515 A.1 claims are returned");
        json_decref(claims);
    }

    check(keys, rfc_hs256, 1300819380, NULL, "expired",
          "RFC 7515 A.1 at its exp");
    check(keys, rfc_rs256, RFC_NOW, NULL, OK,
          "RFC 7515 A.2 RS256 token verifies");
    check(keys, rfc_es256, RFC_NOW, NULL, OK,
          "RFC 7515 A.3 ES256 token verifies");

    /* its payload is not a claims set, so this error proves the signature */
    check(keys, rfc_eddsa, RFC_NOW, NULL, "malformed claims",
          "RFC 8037 A.4 EdDSA signature verifies, payload is no JWT");
    check(keys, changed_at(rfc_eddsa, strlen(rfc_eddsa) - 2),
          RFC_NOW, NULL, "bad signature", "RFC 8037 A.4 with a changed byte");

    check(keys, changed_at(rfc_es256, strlen(rfc_es256) - 5),
          RFC_NOW, NULL, "bad signature", "RFC 7515 A.3 with a changed byte");
    check(keys, changed_at(rfc_rs256, 30),
          RFC_NOW, NULL, "bad signature",
          "RFC 7515 A.2 with a changed payload");

    ngx_http_collab_jwt_keys_free(keys);
}



static EVP_PKEY       *rsa, *rsa2, *ec, *ec2, *ed, *ed2, *ed448;
static char           *pem_rsa, *pem_ec, *pem_ed, *pem_ed448;
static unsigned char  *s256, *s384, *s512, *s_other;
static signer_t        hs256, hs384, hs512, rs256, es256, eddsa;

static const char     *claims_ok =
    "{\"sub\":\"alice\",\"exp\":1800000600,\"iat\":1800000000}";


static void
fixtures(void)
{
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);
    rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);
    ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ed2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ed448 = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");

    if (!rsa || !rsa2 || !ec || !ec2 || !ed || !ed2 || !ed448) {
        die("key generation");
    }

    pem_rsa = pem_of(rsa);
    pem_ec = pem_of(ec);
    pem_ed = pem_of(ed);
    pem_ed448 = pem_of(ed448);

    s256 = random_secret(32);
    s384 = random_secret(48);
    s512 = random_secret(64);
    s_other = random_secret(64);

    memset(&hs256, 0, sizeof(signer_t));
    hs256.alg = "HS256";
    hs256.secret = s256;
    hs256.secret_len = 32;

    hs384 = hs256;
    hs384.alg = "HS384";
    hs384.secret = s384;
    hs384.secret_len = 48;

    hs512 = hs256;
    hs512.alg = "HS512";
    hs512.secret = s512;
    hs512.secret_len = 64;

    memset(&rs256, 0, sizeof(signer_t));
    rs256.alg = "RS256";
    rs256.pkey = rsa;

    es256 = rs256;
    es256.alg = "ES256";
    es256.pkey = ec;

    eddsa = rs256;
    eddsa.alg = "EdDSA";
    eddsa.pkey = ed;
}


static void
fixtures_free(void)
{
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ec2);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(ed2);
    EVP_PKEY_free(ed448);
}


/* one key of every algorithm, with kids */

static ngx_http_collab_jwt_keys_t *
all_keys(void)
{
    ngx_http_collab_jwt_keys_t  *keys;

    keys = ngx_http_collab_jwt_keys_create();
    if (keys == NULL) {
        die("keys_create");
    }

    add(keys, "hs256", "h256", s256, 32, NULL);
    add(keys, "HS384", "h384", s384, 48, NULL);
    add(keys, "Hs512", "h512", s512, 64, NULL);
    add_str(keys, "rs256", "r1", pem_rsa);
    add_str(keys, "es256", "e1", pem_ec);
    add_str(keys, "EdDSA", "d1", pem_ed);

    return keys;
}


static void
test_algorithms(void)
{
    signer_t                     sg;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();

    ok(ngx_http_collab_jwt_keys_count(keys) == 6, "six keys loaded");

    check_sub(keys, token(&hs256, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                          claims_ok),
              NOW, NULL, "alice", "HS256 token verifies");
    check_sub(keys, token(&hs384, "{\"alg\":\"HS384\"}", claims_ok),
              NOW, NULL, "alice", "HS384 token verifies");
    check_sub(keys, token(&hs512, "{\"alg\":\"HS512\",\"kid\":\"h512\"}",
                          claims_ok),
              NOW, NULL, "alice", "HS512 token verifies");
    check_sub(keys, token(&rs256, "{\"alg\":\"RS256\",\"kid\":\"r1\"}",
                          claims_ok),
              NOW, NULL, "alice", "RS256 token verifies");
    check_sub(keys, token(&es256, "{\"alg\":\"ES256\"}", claims_ok),
              NOW, NULL, "alice", "ES256 token verifies");
    check_sub(keys, token(&eddsa, "{\"alg\":\"EdDSA\",\"typ\":\"at+jwt\"}",
                          claims_ok),
              NOW, NULL, "alice", "EdDSA (Ed25519) token verifies");

    /* PKCS#1 v1.5 only: a PSS signature by the right key is refused */
    sg = rs256;
    sg.pss = 1;
    check(keys, token(&sg, "{\"alg\":\"RS256\"}", claims_ok), NOW, NULL,
          "bad signature", "RS256 with a PSS signature");

    /* JWS wants R||S: the DER form of a good signature is refused */
    sg = es256;
    sg.der = 1;
    check(keys, token(&sg, "{\"alg\":\"ES256\"}", claims_ok), NOW, NULL,
          "bad signature", "ES256 with a DER signature");

    /* a header with whitespace and line breaks, like RFC 7515's */
    check_sub(keys, token(&hs256, " {\r\n \"alg\" : \"HS256\" }\r\n",
                          claims_ok),
              NOW, NULL, "alice", "header JSON with whitespace");

    ngx_http_collab_jwt_keys_free(keys);

    keys = ngx_http_collab_jwt_keys_create();
    add_str(keys, "eddsa", NULL, pem_ed448);

    sg = eddsa;
    sg.pkey = ed448;
    check_sub(keys, token(&sg, "{\"alg\":\"EdDSA\"}", claims_ok),
              NOW, NULL, "alice", "EdDSA (Ed448) token verifies");

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_forgery(void)
{
    size_t                       i, n;
    char                        *t, *sig, *p;
    signer_t                     sg;
    const signer_t              *sgs[6];
    ngx_http_collab_jwt_keys_t  *keys;
    static const char           *hdrs[6] = {
        "{\"alg\":\"HS256\"}", "{\"alg\":\"HS384\"}", "{\"alg\":\"HS512\"}",
        "{\"alg\":\"RS256\"}", "{\"alg\":\"ES256\"}", "{\"alg\":\"EdDSA\"}"
    };

    sgs[0] = &hs256;
    sgs[1] = &hs384;
    sgs[2] = &hs512;
    sgs[3] = &rs256;
    sgs[4] = &es256;
    sgs[5] = &eddsa;

    keys = all_keys();

    for (i = 0; i < 6; i++) {
        t = token(sgs[i], hdrs[i], claims_ok);
        sig = strrchr(t, '.') + 1;
        n = sig - t;

        /* mallory's claims with alice's signature */
        p = fmt("%s.%s.%s", b64s(hdrs[i]),
                b64s("{\"sub\":\"mallory\",\"exp\":1800000600}"), sig);
        check(keys, p, NOW, NULL, "bad signature",
              fmt("%s: claims changed, signature kept", sgs[i]->alg));

        /* a signature by another key */
        sg = *sgs[i];
        sg.secret = s_other;
        sg.pkey = (sg.pkey == rsa) ? rsa2 : (sg.pkey == ec) ? ec2 : ed2;

        check(keys, token(&sg, hdrs[i], claims_ok), NOW, NULL,
              "bad signature", fmt("%s: signed by another key", sg.alg));

        /* the first 3 bytes of the signature cut off */
        check(keys, fmt("%.*s%s", (int) n, t, sig + 4), NOW, NULL,
              "bad signature", fmt("%s: truncated signature", sg.alg));

        /* no signature at all */
        check(keys, fmt("%.*s", (int) n, t), NOW, NULL, "bad signature",
              fmt("%s: empty signature", sg.alg));

        /* the signature twice */
        if (strlen(sig) % 4 == 0) {
            check(keys, fmt("%s%s", t, sig), NOW, NULL, "bad signature",
                  fmt("%s: signature doubled", sg.alg));
        }
    }

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_time(void)
{
    ngx_http_collab_jwt_opts_t   opts;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();
    memset(&opts, 0, sizeof(opts));

#define T(claims)  token(&hs256, "{\"alg\":\"HS256\"}", claims)

    check(keys, T("{\"sub\":\"a\",\"exp\":1799999990}"), NOW, NULL,
          "expired", "exp 10 s ago");
    check(keys, T("{\"sub\":\"a\",\"exp\":1800000000}"), NOW, NULL,
          "expired", "exp now (RFC 7519: on or after exp)");
    check(keys, T("{\"sub\":\"a\",\"exp\":1800000001}"), NOW, NULL,
          OK, "exp in 1 s");
    check(keys, T("{\"sub\":\"a\",\"exp\":1800000000.5}"), NOW, NULL,
          OK, "exp as a real, half a second ahead");
    check(keys, T("{\"sub\":\"a\",\"exp\":1799999999.5}"), NOW, NULL,
          "expired", "exp as a real, half a second ago");
    check(keys, T("{\"sub\":\"a\"}"), NOW, NULL, OK,
          "no exp: accepted (exp is optional)");
    check(keys, T("{\"sub\":\"a\",\"exp\":-9223372036854775807}"), NOW, NULL,
          "expired", "exp very negative");
    check(keys, T("{\"sub\":\"a\",\"exp\":9223372036854775807}"), NOW, NULL,
          OK, "exp at the int64 maximum");

    opts.leeway = 60;
    check(keys, T("{\"sub\":\"a\",\"exp\":1799999941}"), NOW, &opts,
          OK, "exp 59 s ago, leeway 60");
    check(keys, T("{\"sub\":\"a\",\"exp\":1799999940}"), NOW, &opts,
          "expired", "exp 60 s ago, leeway 60");
    check(keys, T("{\"sub\":\"a\",\"nbf\":1800000060}"), NOW, &opts,
          OK, "nbf in 60 s, leeway 60");
    check(keys, T("{\"sub\":\"a\",\"nbf\":1800000061}"), NOW, &opts,
          "not yet valid", "nbf in 61 s, leeway 60");

    opts.leeway = -100;
    check(keys, T("{\"sub\":\"a\",\"exp\":1800000001}"), NOW, &opts,
          OK, "negative leeway counts as 0");

    check(keys, T("{\"sub\":\"a\",\"nbf\":1800000010}"), NOW, NULL,
          "not yet valid", "nbf in 10 s");
    check(keys, T("{\"sub\":\"a\",\"nbf\":1800000000}"), NOW, NULL,
          OK, "nbf now");
    check(keys, T("{\"sub\":\"a\",\"nbf\":1799999000,\"exp\":1800001000}"),
          NOW, NULL, OK, "inside nbf..exp");

    check(keys, T("{\"sub\":\"a\",\"exp\":\"1800000600\"}"), NOW, NULL,
          "malformed exp", "exp as a string");
    check(keys, T("{\"sub\":\"a\",\"exp\":null}"), NOW, NULL,
          "malformed exp", "exp null");
    check(keys, T("{\"sub\":\"a\",\"nbf\":true}"), NOW, NULL,
          "malformed nbf", "nbf boolean");
    check(keys, T("{\"sub\":\"a\",\"iat\":[1]}"), NOW, NULL,
          "malformed iat", "iat array");

#undef T

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_iss_aud(void)
{
    ngx_http_collab_jwt_opts_t   opts;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();
    memset(&opts, 0, sizeof(opts));

#define T(claims)  token(&es256, "{\"alg\":\"ES256\"}", claims)

    opts.iss = "https://idp.example";

    check(keys, T("{\"sub\":\"a\",\"iss\":\"https://idp.example\"}"),
          NOW, &opts, OK, "iss matches");
    check(keys, T("{\"sub\":\"a\",\"iss\":\"https://evil.example\"}"),
          NOW, &opts, "bad issuer", "wrong iss");
    check(keys, T("{\"sub\":\"a\",\"iss\":\"https://idp.example.evil\"}"),
          NOW, &opts, "bad issuer", "iss with the expected one as prefix");
    check(keys, T("{\"sub\":\"a\",\"iss\":\"https://idp.exampl\"}"),
          NOW, &opts, "bad issuer", "iss a prefix of the expected one");
    check(keys, T("{\"sub\":\"a\"}"), NOW, &opts, "bad issuer", "no iss");
    check(keys, T("{\"sub\":\"a\",\"iss\":[\"https://idp.example\"]}"),
          NOW, &opts, "bad issuer", "iss as an array");
    check(keys, T("{\"sub\":\"a\",\"iss\":\"https://evil.example\"}"),
          NOW, NULL, OK, "iss not checked without opts");

    opts.iss = NULL;
    opts.aud = "collab";

    check(keys, T("{\"sub\":\"a\",\"aud\":\"collab\"}"), NOW, &opts, OK,
          "aud string matches");
    check(keys, T("{\"sub\":\"a\",\"aud\":\"billing\"}"), NOW, &opts,
          "bad audience", "wrong aud");
    check(keys, T("{\"sub\":\"a\",\"aud\":\"collab2\"}"), NOW, &opts,
          "bad audience", "aud with the expected one as prefix");
    check(keys, T("{\"sub\":\"a\",\"aud\":[\"billing\",\"collab\"]}"),
          NOW, &opts, OK, "aud array containing it");
    check(keys, T("{\"sub\":\"a\",\"aud\":[7,null,\"collab\"]}"),
          NOW, &opts, OK, "aud array with non-strings, containing it");
    check(keys, T("{\"sub\":\"a\",\"aud\":[\"billing\",\"mail\"]}"),
          NOW, &opts, "bad audience", "aud array without it");
    check(keys, T("{\"sub\":\"a\",\"aud\":[]}"), NOW, &opts,
          "bad audience", "aud empty array");
    check(keys, T("{\"sub\":\"a\",\"aud\":[[\"collab\"]]}"), NOW, &opts,
          "bad audience", "aud nested array");
    check(keys, T("{\"sub\":\"a\",\"aud\":1}"), NOW, &opts,
          "bad audience", "aud a number");
    check(keys, T("{\"sub\":\"a\"}"), NOW, &opts, "bad audience", "no aud");

    opts.iss = "idp";
    opts.leeway = 5;

    check_sub(keys, T("{\"sub\":\"bob\",\"iss\":\"idp\",\"aud\":[\"collab\"],"
                      "\"groups\":[\"team\"],\"exp\":1799999998}"),
              NOW, &opts, "bob", "iss, aud and exp within leeway together");

#undef T

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_alg_none(void)
{
    size_t                       i;
    ngx_http_collab_jwt_keys_t  *keys;
    static const char           *none[] = { "none", "None", "NONE", "nOnE" };

    keys = all_keys();

    for (i = 0; i < 4; i++) {
        check(keys, token(NULL, fmt("{\"alg\":\"%s\"}", none[i]), claims_ok),
              NOW, NULL, "alg none rejected",
              fmt("alg \"%s\", empty signature", none[i]));
    }

    /* with an HMAC by a real key, and a kid naming one */
    check(keys, fmt("%s.%s.%s", b64s("{\"alg\":\"none\",\"kid\":\"h256\"}"),
                    b64s(claims_ok),
                    sign(&hs256, fmt("%s.%s", b64s("{\"alg\":\"none\"}"),
                                     b64s(claims_ok)))),
          NOW, NULL, "alg none rejected", "alg none with a signature and kid");

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_confusion(void)
{
    signer_t                     sg;
    ngx_http_collab_jwt_keys_t  *keys;

    /* the RS256 public key is public: an attacker HMACs with its PEM */

    keys = ngx_http_collab_jwt_keys_create();
    add_str(keys, "rs256", "rsa-1", pem_rsa);

    memset(&sg, 0, sizeof(signer_t));
    sg.alg = "HS256";
    sg.secret = (unsigned char *) pem_rsa;
    sg.secret_len = strlen(pem_rsa);

    check(keys, token(&sg, "{\"alg\":\"HS256\"}", claims_ok), NOW, NULL,
          "algorithm mismatch", "HS256 signed with the RSA PEM, no kid");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}",
                      claims_ok),
          NOW, NULL, "algorithm mismatch",
          "HS256 signed with the RSA PEM, kid of the RSA key");

    sg.secret_len = strlen(pem_rsa) - 1;
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}",
                      claims_ok),
          NOW, NULL, "algorithm mismatch",
          "HS256 signed with the RSA PEM less its newline");

    /* claiming RS256 with an HMAC signature fails as a signature */
    sg.secret_len = strlen(pem_rsa);
    check(keys, fmt("%s.%s.%s", b64s("{\"alg\":\"RS256\"}"), b64s(claims_ok),
                    sign(&sg, fmt("%s.%s", b64s("{\"alg\":\"RS256\"}"),
                                  b64s(claims_ok)))),
          NOW, NULL, "bad signature", "RS256 header with an HMAC signature");

    check(keys, token(&es256, "{\"alg\":\"ES256\",\"kid\":\"rsa-1\"}",
                      claims_ok),
          NOW, NULL, "algorithm mismatch", "ES256 token naming the RSA key");

    ngx_http_collab_jwt_keys_free(keys);

    /* and the same with an RSA key configured without kid */

    keys = ngx_http_collab_jwt_keys_create();
    add_str(keys, "rs256", NULL, pem_rsa);

    check(keys, token(&sg, "{\"alg\":\"HS256\"}", claims_ok), NOW, NULL,
          "algorithm mismatch", "HS256 with the PEM against a kid-less key");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"x\"}", claims_ok),
          NOW, NULL, "unknown kid",
          "HS256 with the PEM and a kid, against a kid-less RSA key");

    ngx_http_collab_jwt_keys_free(keys);

    /* the same secret under another HMAC algorithm */

    keys = ngx_http_collab_jwt_keys_create();
    add(keys, "hs256", NULL, s512, 64, NULL);

    sg = hs512;
    sg.alg = "HS384";
    check(keys, token(&sg, "{\"alg\":\"HS384\"}", claims_ok), NOW, NULL,
          "algorithm mismatch", "HS384 token, HS256 key with that secret");

    sg.alg = "HS256";
    check(keys, token(&sg, "{\"alg\":\"HS256\"}", claims_ok), NOW, NULL,
          OK, "HS256 token, HS256 key with that secret");

    /* the header's alg is case-sensitive (RFC 7515 4.1.1) */
    check(keys, token(&sg, "{\"alg\":\"hs256\"}", claims_ok), NOW, NULL,
          "unsupported algorithm", "alg \"hs256\" (lower case)");

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_kid(void)
{
    signer_t                     sg;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = ngx_http_collab_jwt_keys_create();

    add(keys, "hs256", "h1", s256, 32, NULL);
    add(keys, "hs256", "h2", s_other, 64, NULL);
    add_str(keys, "es256", "e1", pem_ec);
    add_str(keys, "es256", "e2", pem_of(ec2));
    add_str(keys, "rs256", NULL, pem_rsa);
    add_str(keys, "eddsa", "d1", pem_ed);

    sg = hs256;
    sg.secret = s_other;
    sg.secret_len = 64;

    check_sub(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"h2\"}",
                          claims_ok),
              NOW, NULL, "alice", "kid h2 picks the second HS256 key");
    check_sub(keys, token(&hs256, "{\"alg\":\"HS256\",\"kid\":\"h1\"}",
                          claims_ok),
              NOW, NULL, "alice", "kid h1 picks the first HS256 key");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"h1\"}", claims_ok),
          NOW, NULL, "bad signature", "h2's signature under kid h1");
    check(keys, token(&sg, "{\"alg\":\"HS256\"}", claims_ok),
          NOW, NULL, "kid required", "HS256 without kid, two HS256 keys");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"h3\"}", claims_ok),
          NOW, NULL, "unknown kid", "unknown kid h3");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"H2\"}", claims_ok),
          NOW, NULL, "unknown kid", "kids are case-sensitive");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"h\"}", claims_ok),
          NOW, NULL, "unknown kid", "a kid prefix is not a kid");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"\"}", claims_ok),
          NOW, NULL, "unknown kid", "empty kid");

    sg = es256;
    sg.pkey = ec2;

    check_sub(keys, token(&sg, "{\"alg\":\"ES256\",\"kid\":\"e2\"}",
                          claims_ok),
              NOW, NULL, "alice", "kid e2 picks the second ES256 key");
    check(keys, token(&sg, "{\"alg\":\"ES256\",\"kid\":\"e1\"}", claims_ok),
          NOW, NULL, "bad signature", "e2's signature under kid e1");

    check_sub(keys, token(&rs256, "{\"alg\":\"RS256\"}", claims_ok),
              NOW, NULL, "alice", "RS256 without kid: the kid-less key");
    check_sub(keys, token(&rs256, "{\"alg\":\"RS256\",\"kid\":\"k9\"}",
                          claims_ok),
              NOW, NULL, "alice",
              "RS256 with any kid: the only RS256 key, kid-less");
    check_sub(keys, token(&eddsa, "{\"alg\":\"EdDSA\"}", claims_ok),
              NOW, NULL, "alice", "EdDSA without kid: the only EdDSA key");
    check(keys, token(&eddsa, "{\"alg\":\"EdDSA\",\"kid\":\"e1\"}",
                      claims_ok),
          NOW, NULL, "algorithm mismatch", "EdDSA token naming an ES256 key");
    check(keys, token(&eddsa, "{\"alg\":\"EdDSA\",\"kid\":\"d9\"}",
                      claims_ok),
          NOW, NULL, "unknown kid", "EdDSA unknown kid, only key has a kid");

    ngx_http_collab_jwt_keys_free(keys);

    /* rotation: the old key has no kid, the new one has */

    keys = ngx_http_collab_jwt_keys_create();

    add(keys, "hs256", NULL, s256, 32, NULL);
    add(keys, "hs256", "2025", s_other, 64, NULL);

    sg = hs256;
    sg.secret = s_other;
    sg.secret_len = 64;

    check_sub(keys, token(&hs256, "{\"alg\":\"HS256\"}", claims_ok),
              NOW, NULL, "alice", "rotation: old token without kid");
    check_sub(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"2025\"}",
                          claims_ok),
              NOW, NULL, "alice", "rotation: new token with kid");
    check(keys, token(&sg, "{\"alg\":\"HS256\"}", claims_ok),
          NOW, NULL, "bad signature",
          "rotation: new key's token without kid goes to the old key");
    check(keys, token(&hs256, "{\"alg\":\"HS256\",\"kid\":\"2024\"}",
                      claims_ok),
          NOW, NULL, "unknown kid",
          "rotation: unknown kid with two keys of the algorithm");

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_malformed(void)
{
    char                        *t, *hs, *sig, *c;
    size_t                       i, n;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();

    t = token(&hs256, "{\"alg\":\"HS256\"}", claims_ok);
    hs = fmt("%.*s", (int) (strrchr(t, '.') - t), t);
    sig = strrchr(t, '.') + 1;

    check(keys, "", NOW, NULL, "malformed token", "empty token");
    check_len(keys, NULL, 0, NOW, NULL, "malformed token", "NULL, 0");
    check(keys, "abc", NOW, NULL, "malformed token", "one segment");
    check(keys, hs, NOW, NULL, "malformed token", "two segments");
    check(keys, fmt("%s.", t), NOW, NULL, "malformed token",
          "four segments (empty last)");
    check(keys, fmt("%s.%s", t, sig), NOW, NULL, "malformed token",
          "four segments");
    check(keys, "..", NOW, NULL, "malformed header", "three empty segments");
    check(keys, fmt(".%s", strchr(t, '.') + 1), NOW, NULL, "malformed header",
          "empty header");

    /* base64url strictly: no padding, no standard alphabet, no spaces */
    check(keys, fmt("%s==", t), NOW, NULL, "malformed token",
          "padding on the signature");
    check(keys, fmt("%s=.%s", b64s("{\"alg\":\"HS256\"}"),
                    strchr(t, '.') + 1),
          NOW, NULL, "malformed token", "padding on the header");
    check(keys, fmt("%s ", t), NOW, NULL, "malformed token",
          "trailing space");
    check(keys, fmt("%s\n", t), NOW, NULL, "malformed token",
          "trailing newline");
    check(keys, fmt(" %s", t), NOW, NULL, "malformed token",
          "leading space");
    check(keys, fmt("Bearer %s", t), NOW, NULL, "malformed token",
          "\"Bearer \" prefix");

    c = fmt("%s", t);
    c[3] = '+';
    check(keys, c, NOW, NULL, "malformed token", "'+' in the header");

    c = fmt("%s", t);
    c[strlen(c) - 3] = '/';
    check(keys, c, NOW, NULL, "malformed token", "'/' in the signature");

    c = fmt("%s", t);
    c[strlen(c) - 3] = '\xc3';
    check(keys, c, NOW, NULL, "malformed token", "a byte >= 0x80");

    /* 43 + 2 characters: a lone 6 bits cannot make a byte */
    check(keys, fmt("%sAA", t), NOW, NULL, "malformed token",
          "signature of 4n+1 characters");

    /*
     * HS256: 32 bytes in 43 characters, the last one carries 2 unused
     * bits; setting them gives the same bytes to a lenient decoder
     */
    n = strlen(t) - 1;
    c = fmt("%s", t);
    c[n] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
           [(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                    "0123456789-_", t[n])
             - "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
               "0123456789-_") | 1];
    check(keys, c, NOW, NULL, "malformed token",
          "non-canonical last character of the signature");

    c = fmt("%s", t);
    c[5] = '\0';
    check_len(keys, c, strlen(t), NOW, NULL, "malformed token",
              "a NUL byte inside");

    /* the header */

#define H(h)  fmt("%s.%s.%s", b64s(h), b64s(claims_ok), \
                  sign(&hs256, fmt("%s.%s", b64s(h), b64s(claims_ok))))

    check(keys, H("not json"), NOW, NULL, "malformed header",
          "header not JSON");
    check(keys, H("[\"HS256\"]"), NOW, NULL, "malformed header",
          "header a JSON array");
    check(keys, H("\"HS256\""), NOW, NULL, "malformed header",
          "header a JSON string");
    check(keys, H("{\"alg\":\"HS256\"} x"), NOW, NULL, "malformed header",
          "header with trailing garbage");
    check(keys, H("{\"alg\":\"HS256\""), NOW, NULL, "malformed header",
          "header truncated");
    check(keys, H("{\"typ\":\"JWT\"}"), NOW, NULL, "malformed header",
          "header without alg");
    check(keys, H("{\"alg\":256}"), NOW, NULL, "malformed header",
          "alg a number");
    check(keys, H("{\"alg\":null}"), NOW, NULL, "malformed header",
          "alg null");
    check(keys, H("{\"alg\":\"HS256\",\"kid\":1}"), NOW, NULL,
          "malformed header", "kid a number");
    check(keys, H("{\"alg\":\"HS256\",\"typ\":[\"JWT\"]}"), NOW, NULL,
          "malformed header", "typ an array");
    check(keys, H("{\"alg\":\"HS256\",\"alg\":\"none\"}"), NOW, NULL,
          "malformed header", "duplicate alg");
    check(keys, H("{\"alg\":\"none\",\"alg\":\"HS256\"}"), NOW, NULL,
          "malformed header", "duplicate alg, none first");
    check(keys, H("{\"alg\":\"HS\\u0000256\"}"), NOW, NULL,
          "malformed header", "alg with an escaped NUL");
    check(keys, H("{\"alg\":\"HS256\",\"x\":\"\xff\"}"), NOW, NULL,
          "malformed header", "header with invalid UTF-8");
    check(keys, H("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}"), NOW, NULL,
          "unsupported crit header", "crit header");
    check(keys, H("{\"alg\":\"HS256\",\"b64\":false,\"crit\":[\"b64\"]}"),
          NOW, NULL, "unsupported crit header", "unencoded payload (RFC 7797)");
    check(keys, H("{\"alg\":\"RS512\"}"), NOW, NULL, "unsupported algorithm",
          "alg RS512");
    check(keys, H("{\"alg\":\"PS256\"}"), NOW, NULL, "unsupported algorithm",
          "alg PS256");
    check(keys, H("{\"alg\":\"\"}"), NOW, NULL, "unsupported algorithm",
          "alg empty");
    check(keys, H("{\"alg\":\"HS256\",\"jwk\":{\"kty\":\"oct\",\"k\":\"AA\"}}"),
          NOW, NULL, OK, "an embedded jwk is ignored, not trusted");

#undef H

    /* the claims, under a good signature */

#define P(p)  fmt("%s.%s.%s", b64s("{\"alg\":\"HS256\"}"), b64s(p), \
                  sign(&hs256, fmt("%s.%s", b64s("{\"alg\":\"HS256\"}"), \
                                   b64s(p))))

    check(keys, P("not json"), NOW, NULL, "malformed claims",
          "claims not JSON");
    check(keys, P("[1,2]"), NOW, NULL, "malformed claims",
          "claims a JSON array");
    check(keys, P(""), NOW, NULL, "malformed claims", "claims empty");
    check(keys, P("{\"sub\":\"alice\",\"sub\":\"admin\"}"), NOW, NULL,
          "malformed claims", "duplicate sub");
    check(keys, P("{\"sub\":\"alice\"}\n"), NOW, NULL, OK,
          "claims with a trailing newline");

    /* a claims segment that is no base64url, under a valid HMAC of it */
    c = fmt("%s.eyJzdWIiOiJhIn0=", b64s("{\"alg\":\"HS256\"}"));
    check(keys, fmt("%s.%s", c, sign(&hs256, c)), NOW, NULL,
          "malformed token", "signed claims segment with padding");

    /* nesting beyond jansson's depth limit (2048) fails cleanly */
    c = keep(calloc(1, 2 * 2100 + 1));
    for (i = 0; i < 2100; i++) {
        c[i] = '[';
        c[2100 + i] = ']';
    }
    c = fmt("{\"a\":%s}", c);
    check(keys, P(c), NOW, NULL, "malformed claims",
          "claims nested 2100 deep");

#undef P

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_size(void)
{
    char                        *t, *hdr, *pl, *pad;
    size_t                       n, typ, h, want, m;
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();

    /*
     * A valid token of exactly NGX_HTTP_COLLAB_JWT_MAX_TOKEN bytes: the
     * claims' base64 length cannot be 4n+1, so the header's "typ" is
     * varied until the rest fits.
     */

    t = NULL;

    for (typ = 0; typ < 4 && t == NULL; typ++) {
        hdr = fmt("{\"alg\":\"HS256\",\"typ\":\"%.*s\"}", (int) typ, "JWTx");
        h = strlen(b64s(hdr));

        /* header . claims . 43 characters of signature */
        want = NGX_HTTP_COLLAB_JWT_MAX_TOKEN - h - 2 - 43;

        for (m = 0; m < NGX_HTTP_COLLAB_JWT_MAX_TOKEN; m++) {
            n = strlen("{\"sub\":\"alice\",\"pad\":\"\"}") + m;

            if (n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0) == want) {
                pad = keep(malloc(m + 1));
                memset(pad, 'x', m);
                pad[m] = '\0';

                pl = fmt("{\"sub\":\"alice\",\"pad\":\"%s\"}", pad);
                t = token(&hs256, hdr, pl);
                break;
            }
        }
    }

    ok(t && strlen(t) == NGX_HTTP_COLLAB_JWT_MAX_TOKEN,
       "built a token of %d bytes", NGX_HTTP_COLLAB_JWT_MAX_TOKEN);

    if (t) {
        check_sub(keys, t, NOW, NULL, "alice",
                  "a token of exactly the maximum size verifies");

        check_len(keys, fmt("%sA", t), strlen(t) + 1, NOW, NULL,
                  "token too long", "one byte more");
    }

    pad = keep(malloc(1024 * 1024 + 1));
    memset(pad, 'A', 1024 * 1024);
    pad[1024 * 1024] = '\0';
    pad[100] = '.';
    pad[200] = '.';

    check(keys, pad, NOW, NULL, "token too long", "a 1 MB token");

    /* the length is checked before the token is read */
    check_len(keys, pad, (size_t) -1, NOW, NULL, "token too long",
              "a length of SIZE_MAX");

    ngx_http_collab_jwt_keys_free(keys);
}


static void
test_key_add(void)
{
    char                        *pem, *secret;
    signer_t                     sg;
    EVP_PKEY                    *k;
    const char                  *err;
    unsigned char                buf[256];
    ngx_http_collab_jwt_keys_t  *keys;

    keys = ngx_http_collab_jwt_keys_create();

    add_fails(keys, "hs257", NULL, s256, 32, "an unknown algorithm");
    add_fails(keys, "none", NULL, s256, 32, "alg none");
    add_fails(keys, "", NULL, s256, 32, "an empty algorithm");
    add_fails(keys, "rs384", NULL, pem_rsa, strlen(pem_rsa), "rs384");
    add_fails(keys, "hs256", NULL, s256, 31, "a 31-byte hs256 secret");
    add_fails(keys, "hs256", NULL, "", 0, "an empty secret");
    add_fails(keys, "hs256", NULL, "\n", 1, "a secret of a newline");
    add_fails(keys, "hs384", NULL, s384, 47, "a 47-byte hs384 secret");
    add_fails(keys, "hs512", NULL, s512, 63, "a 63-byte hs512 secret");
    add_fails(keys, "hs256", NULL, pem_rsa, strlen(pem_rsa),
              "an RSA public key PEM as an hs256 secret");

    secret = fmt("0123456789abcdef0123456789abcdef-----BEGIN PRIVATE KEY");
    add_fails(keys, "hs256", NULL, secret, strlen(secret),
              "a secret containing a PEM header");

    add_fails(keys, "rs256", NULL, pem_ec, strlen(pem_ec),
              "an EC key for rs256");
    add_fails(keys, "rs256", NULL, pem_ed, strlen(pem_ed),
              "an Ed25519 key for rs256");
    add_fails(keys, "es256", NULL, pem_rsa, strlen(pem_rsa),
              "an RSA key for es256");
    add_fails(keys, "eddsa", NULL, pem_ec, strlen(pem_ec),
              "an EC key for eddsa");
    add_fails(keys, "eddsa", NULL, s256, 32, "random bytes for eddsa");
    add_fails(keys, "rs256", NULL, "", 0, "an empty file for rs256");
    add_fails(keys, "rs256", NULL, "-----BEGIN PUBLIC KEY-----\nAAAA\n"
              "-----END PUBLIC KEY-----\n", 55, "a broken PEM");

    k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 1024);
    pem = pem_of(k);
    add_fails(keys, "rs256", NULL, pem, strlen(pem), "a 1024-bit RSA key");
    EVP_PKEY_free(k);

    k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    pem = pem_of(k);
    add_fails(keys, "es256", NULL, pem, strlen(pem), "a P-384 key for es256");
    EVP_PKEY_free(k);

    k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "secp256k1");
    pem = pem_of(k);
    add_fails(keys, "es256", NULL, pem, strlen(pem),
              "a secp256k1 key for es256");
    EVP_PKEY_free(k);

    pem = priv_pem_of(ec);
    add_fails(keys, "es256", NULL, pem, strlen(pem),
              "a private key (only public keys belong on the edge)");

    secret = keep(malloc(NGX_HTTP_COLLAB_JWT_MAX_KEY + 1));
    memset(secret, 'k', NGX_HTTP_COLLAB_JWT_MAX_KEY + 1);
    add_fails(keys, "hs256", NULL, secret, NGX_HTTP_COLLAB_JWT_MAX_KEY + 1,
              "key data over 1 MB");
    add_fails(keys, "rs256", NULL, NULL, 0, "no data");

    ok(ngx_http_collab_jwt_keys_count(keys) == 0, "no key was added");

    /* a text secret with the newline of "echo secret > file" */

    memset(&sg, 0, sizeof(signer_t));
    sg.alg = "HS256";
    sg.secret = (unsigned char *) "correct horse battery staple, 32";
    sg.secret_len = 32;

    ok(add(keys, "hs256", "nl", "correct horse battery staple, 32\n", 33,
           NULL) == 0,
       "hs256 text secret with a trailing newline");
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"nl\"}", claims_ok),
          NOW, NULL, OK, "the newline is not part of the text secret");

    secret = "V2UgYWxsIGxpdmUgaW4gYSB5ZWxsb3cgc3VibWFyaW5lLi4u";
    ok(add(keys, "hs384", "crlf", fmt("%s\r\n", secret), 50, NULL) == 0,
       "hs384 text secret with a trailing CRLF");

    sg.alg = "HS384";
    sg.secret = (unsigned char *) secret;
    sg.secret_len = 48;
    check(keys, token(&sg, "{\"alg\":\"HS384\",\"kid\":\"crlf\"}",
                      claims_ok),
          NOW, NULL, OK, "the CRLF is not part of the text secret");

    /* a binary secret keeps a last 0x0a byte */

    memcpy(buf, s256, 32);
    buf[0] = 0x01;
    buf[32] = '\n';
    ok(add(keys, "hs256", "bin", buf, 33, NULL) == 0,
       "hs256 binary secret ending in 0x0a");

    sg.alg = "HS256";
    sg.secret = buf;
    sg.secret_len = 33;
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"bin\"}", claims_ok),
          NOW, NULL, OK, "the binary secret is used byte for byte");

    sg.secret_len = 32;
    check(keys, token(&sg, "{\"alg\":\"HS256\",\"kid\":\"bin\"}", claims_ok),
          NOW, NULL, "bad signature", "the binary secret less its 0x0a");

    add_fails(keys, "hs512", "nl", s512, 64, "a duplicate kid");
    add_fails(keys, "hs512", "", s512, 64, "an empty kid");
    add_fails(keys, "hs512", fmt("%0300d", 7), s512, 64, "a 300-byte kid");

    ok(add(keys, "hs256", NULL, s_other, 64, NULL) == 0,
       "a kid-less hs256 key beside one with a kid");
    add_fails(keys, "hs256", NULL, s_other, 64,
              "a second kid-less hs256 key");

    /* a certificate instead of a bare public key */

    pem = cert_of(rsa);
    err = NULL;
    ok(add(keys, "rs256", "cert", pem, strlen(pem), &err) == 0,
       "rs256 key from a certificate");
    check_sub(keys, token(&rs256, "{\"alg\":\"RS256\",\"kid\":\"cert\"}",
                          claims_ok),
              NOW, NULL, "alice", "RS256 token against the certificate");

    pem = cert_of(ec);
    ok(add(keys, "es256", "ec-cert", pem, strlen(pem), &err) == 0,
       "es256 key from a certificate");

    /* other PEM blocks before the key are skipped */
    pem = fmt("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
              "-----END CERTIFICATE REQUEST-----\n%s", pem_ed);
    ok(add(keys, "eddsa", "after-junk", pem, strlen(pem), &err) == 0,
       "eddsa key after another PEM block");

    ok(ngx_http_collab_jwt_keys_count(keys) == 7, "seven keys in the set");

    ngx_http_collab_jwt_keys_free(keys);

    ngx_http_collab_jwt_keys_free(NULL);
    ok(1, "keys_free(NULL) is harmless");

    ok(ERR_peek_error() == 0, "the OpenSSL error queue is left clean");
}


static void
test_mutations(void)
{
    ngx_http_collab_jwt_keys_t  *keys;

    keys = all_keys();

    mutations(keys, token(&hs256, "{\"alg\":\"HS256\",\"kid\":\"h256\"}",
                          claims_ok),
              "HS256");
    mutations(keys, token(&es256, "{\"alg\":\"ES256\"}", claims_ok), "ES256");
    mutations(keys, token(&eddsa, "{\"alg\":\"EdDSA\"}", claims_ok), "EdDSA");
    mutations(keys, token(&rs256, "{\"alg\":\"RS256\"}", "{\"sub\":\"a\"}"),
              "RS256");

    ngx_http_collab_jwt_keys_free(keys);
}


int
main(void)
{
    size_t  i;

    fixtures();

    diag("known answers");
    test_rfc_vectors();

    diag("every algorithm");
    test_algorithms();

    diag("forged signatures");
    test_forgery();

    diag("exp, nbf, leeway");
    test_time();

    diag("iss, aud");
    test_iss_aud();

    diag("alg none");
    test_alg_none();

    diag("algorithm confusion");
    test_confusion();

    diag("kid selection");
    test_kid();

    diag("malformed tokens");
    test_malformed();

    diag("size limit");
    test_size();

    diag("key loading");
    test_key_add();

    diag("single-character mutations");
    test_mutations();

    ok(ERR_peek_error() == 0, "the OpenSSL error queue is clean at the end");

    printf("1..%d\n", test_no);

    fixtures_free();

    for (i = 0; i < ngarbage; i++) {
        free(garbage[i]);
    }

    free(garbage);

    return test_failed ? 1 : 0;
}
