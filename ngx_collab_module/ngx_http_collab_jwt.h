
/*
 * Copyright (C) ngx_collab_module authors
 */


#ifndef _NGX_HTTP_COLLAB_JWT_H_INCLUDED_
#define _NGX_HTTP_COLLAB_JWT_H_INCLUDED_


/*
 * JWT (JWS compact serialization) verification.  It depends on nothing but
 * libcrypto (OpenSSL 3) and jansson so that the unit tests and the fuzz
 * target link it alone.
 *
 * Algorithms: HS256, HS384, HS512, RS256 (PKCS#1 v1.5), ES256 (P-256, raw
 * R||S signature) and EdDSA (Ed25519 or Ed448).
 *
 * The algorithm is a property of the configured key, never of the token:
 * a token is verified only with a key whose algorithm equals the token's
 * "alg", so an HS256 token can never be checked with an RSA public key
 * used as an HMAC secret.  "alg":"none" (any case) is always rejected, and
 * so is any "crit" header, since no extension is understood.  Header
 * parameters that name keys ("jwk", "jku", "x5u", "x5c") are ignored: keys
 * come from the configuration only.
 *
 * Key selection:
 *   - the token has a "kid": the key with that kid; when no key has it,
 *     a key configured without a kid that is the only key of the token's
 *     algorithm; otherwise "unknown kid";
 *   - the token has no "kid": the key of the token's algorithm configured
 *     without a kid (old tokens keep working while keys with kids are
 *     rolled out); otherwise the only key of that algorithm; several =>
 *     "kid required", none => "algorithm mismatch".
 *
 * Claims: "exp", "nbf" and "iat" must be numbers when present.  "exp" is
 * optional; when present the token is expired from exp + leeway on, and
 * with "nbf" it is not valid before nbf - leeway.  "iss" and "aud" are
 * checked when the options ask for them: "iss" must equal opts->iss, "aud"
 * (a string or an array of strings) must contain opts->aud.  Other claims
 * ("sub", "groups", ...) are left to the caller.
 *
 * Error strings are static, short, name no key material and never quote
 * the token: "token too long", "malformed token", "malformed header",
 * "alg none rejected", "unsupported algorithm", "unsupported crit header",
 * "unknown kid", "kid required", "algorithm mismatch", "bad signature",
 * "malformed claims", "malformed exp", "malformed nbf", "malformed iat",
 * "expired", "not yet valid", "bad issuer", "bad audience",
 * "internal error".
 *
 * Verification only reads the key set, so one set may serve any number of
 * threads once loaded.  OpenSSL errors raised inside are popped off the
 * thread's error queue before returning.
 */


#include <stddef.h>

#include <jansson.h>


#define NGX_HTTP_COLLAB_JWT_MAX_TOKEN  8192   /* bytes of a whole token */
#define NGX_HTTP_COLLAB_JWT_MAX_KID    256
#define NGX_HTTP_COLLAB_JWT_MAX_KEY    (1024 * 1024)   /* bytes of key data */


typedef struct ngx_http_collab_jwt_keys_s  ngx_http_collab_jwt_keys_t;


typedef struct {
    long long     leeway;   /* seconds allowed on exp and nbf; < 0 is 0 */
    const char   *iss;      /* NULL: not checked */
    const char   *aud;      /* NULL: not checked */
} ngx_http_collab_jwt_opts_t;


/* NULL on allocation failure */
ngx_http_collab_jwt_keys_t *ngx_http_collab_jwt_keys_create(void);
void ngx_http_collab_jwt_keys_free(ngx_http_collab_jwt_keys_t *keys);

/*
 * alg: "hs256", "hs384", "hs512", "rs256", "es256" or "eddsa" (any case).
 * kid: NULL for a key without a kid; kids are unique within a set, and an
 * algorithm has at most one key without a kid.
 *
 * hs*: data is the secret.  A text secret (printable ASCII) loses one
 * trailing "\n" or "\r\n"; any other secret is used byte for byte.  It
 * must be at least as long as the hash output (RFC 7518 3.2: 32, 48, 64
 * bytes) and must not be a PEM object (a public key used as an HMAC
 * secret lets anybody sign).  rs256, es256, eddsa: data holds a PEM public key
 * ("BEGIN PUBLIC KEY") or a certificate, whose key is used as is (its
 * validity is not checked); it must be RSA of 2048 bits or more, EC on
 * P-256, or Ed25519/Ed448 respectively.
 *
 * Returns 0, or -1 with a static message in *err.
 */
int ngx_http_collab_jwt_key_add(ngx_http_collab_jwt_keys_t *keys,
    const char *alg, const char *kid, const unsigned char *data, size_t len,
    const char **err);

/* number of keys in the set */
size_t ngx_http_collab_jwt_keys_count(ngx_http_collab_jwt_keys_t *keys);

/*
 * Verifies the token's signature and claims at time "now" (seconds since
 * the epoch); opts may be NULL (no leeway, iss and aud not checked).
 * Returns 0 and the claims object in *claims (a new reference: the caller
 * json_decref()s it), or -1 with *claims NULL and a static reason in *err.
 */
int ngx_http_collab_jwt_verify(ngx_http_collab_jwt_keys_t *keys,
    const char *token, size_t len, long long now,
    const ngx_http_collab_jwt_opts_t *opts, json_t **claims,
    const char **err);


#endif /* _NGX_HTTP_COLLAB_JWT_H_INCLUDED_ */
