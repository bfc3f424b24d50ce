/* content_id.c — uuids of handed-over images (content_id.h): the client's, checked, or SHA-256 of the image
 * bytes and what changes its embeddings. SHA-256 comes from OpenSSL's libcrypto (EVP digests). */
#include "content_id.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "checkpoint.h"
#include "util.h"

#define SAMPLE_BYTES 4096

void content_id_sha256(const void *data, size_t n, uint8_t out[32]) {
    unsigned int len = 32;
    if (!EVP_Digest(data, n, out, &len, EVP_sha256(), NULL)) VITD_ASSERT(!"EVP_Digest(SHA-256) failed");
}

/* A running SHA-256 (EVP context), aborting on the library failures that only a broken libcrypto gives. */
static EVP_MD_CTX *sha_begin(void) {
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    VITD_ASSERT(c && EVP_DigestInit_ex(c, EVP_sha256(), NULL));
    return c;
}

static void sha_put(EVP_MD_CTX *c, const void *p, size_t n) { VITD_ASSERT(EVP_DigestUpdate(c, p, n)); }

static void sha_putf(EVP_MD_CTX *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sha_putf(EVP_MD_CTX *c, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sha_put(c, buf, n < (int)sizeof buf ? (size_t)n : sizeof buf - 1);
}

static void sha_end(EVP_MD_CTX *c, uint8_t out[32]) {
    unsigned int len = 32;
    VITD_ASSERT(EVP_DigestFinal_ex(c, out, &len));
    EVP_MD_CTX_free(c);
}

void content_id_model(const vitd_model *m, uint8_t out[32]) {
    const vitd_vision_config *v = vitd_model_config(m);
    const vitd_preproc_config *p = vitd_model_preproc(m);
    EVP_MD_CTX *c = sha_begin();
    sha_putf(c, "vitd-model/1\ndepth %d hidden %d inter %d heads %d out %d patch %d temporal %d merge %d ch %d "
             "pos %d theta %.17g eps %.17g\n", v->depth, v->hidden_size, v->intermediate_size, v->num_heads,
             v->out_hidden_size, v->patch_size, v->temporal_patch_size, v->spatial_merge_size, v->in_channels,
             v->num_position_embeddings, v->rope_theta, v->ln_eps);
    sha_putf(c, "deepstack");
    for (int i = 0; i < v->n_deepstack; i++) sha_putf(c, " %d", v->deepstack_indexes[i]);
    sha_putf(c, "\npre %zu %zu %d %d %d mean %.9g %.9g %.9g std %.9g %.9g %.9g rescale %.17g\n", p->min_pixels,
             p->max_pixels, p->patch_size, p->temporal_patch_size, p->merge_size, p->image_mean[0],
             p->image_mean[1], p->image_mean[2], p->image_std[0], p->image_std[1], p->image_std[2],
             p->rescale_factor);
    int n = checkpoint_count(m);
    for (int i = 0; i < n; i++) {
        const char *name = NULL;
        const st_tensor *t = checkpoint_tensor_at(m, i, &name);
        sha_putf(c, "%s %s", name, st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) sha_putf(c, " %lld", (long long)t->shape[d]);
        sha_putf(c, " %zu\n", t->nbytes);
        const uint8_t *data = t->data;
        if (t->nbytes <= 2 * SAMPLE_BYTES) {
            sha_put(c, data, t->nbytes);
        } else {
            sha_put(c, data, SAMPLE_BYTES);
            sha_put(c, data + t->nbytes - SAMPLE_BYTES, SAMPLE_BYTES);
        }
    }
    sha_end(c, out);
}

void content_id_key(const uint8_t model_fp[32], size_t min_pixels, size_t max_pixels, const uint8_t *bytes,
                    size_t len, uint8_t out[32]) {
    EVP_MD_CTX *c = sha_begin();
    sha_putf(c, "vitd-content-id/1\n");
    sha_put(c, model_fp, 32);
    sha_putf(c, "%zu %zu\n", min_pixels, max_pixels);
    sha_put(c, bytes, len);
    sha_end(c, out);
}

void content_id_hex(const uint8_t key[32], char out[CONTENT_ID_LEN + 1]) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[key[i] >> 4];
        out[2 * i + 1] = hex[key[i] & 15];
    }
    out[CONTENT_ID_LEN] = '\0';
}

void content_id_image(const uint8_t model_fp[32], size_t min_pixels, size_t max_pixels, const uint8_t *bytes,
                      size_t len, char out[CONTENT_ID_LEN + 1]) {
    uint8_t h[32];
    content_id_key(model_fp, min_pixels, max_pixels, bytes, len, h);
    content_id_hex(h, out);
}

bool content_id_uuid_ok(const char *s, size_t n, vitd_err *err) {
    if (n == 0 || n > CONTENT_ID_UUID_MAX) {
        vitd_fail(err, VITD_E_INVALID_ARG, "uuid: %zu characters; 1 to %d of A-Z a-z 0-9 . _ : + = -", n,
                  CONTENT_ID_UUID_MAX);
        return false;
    }
    if (s[0] == '.') {
        vitd_fail(err, VITD_E_INVALID_ARG, "uuid: must not start with '.' (it names a cache directory)");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  (ch && strchr("._:+=-", ch));
        if (!ok) {
            vitd_fail(err, VITD_E_INVALID_ARG, "uuid: character %zu (0x%02x) is not one of A-Z a-z 0-9 . _ : + = -",
                      i, ch);
            return false;
        }
    }
    return true;
}
