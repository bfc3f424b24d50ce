/* content_id.h — the ids images are handed over under: a client's uuid when it gives one (checked to be a safe
 * file name, since vLLM's cache files live in a directory of that name), else a content id vitd derives.
 *
 * Derived id: 64 lower-case hex digits, SHA-256 of
 *     "vitd-content-id/1\n" || model fingerprint (32 bytes) || "<min_pixels> <max_pixels>\n" || image bytes
 * so the same file sent to the same model with the same resize bounds gets the same id on every replica and
 * restart, and anything that changes the embeddings (another checkpoint, other bounds, other bytes) changes it.
 * The answer's dtype does not enter it: the id names the image's embeddings, not one serialisation of them.
 * The model fingerprint is SHA-256 over the vision config, the preprocessor bounds' defaults, and every vision
 * tensor's name, dtype, shape and first and last 4 KiB of data (content_id_model): another checkpoint of the
 * same shape (a fine-tune, another seed) differs in every tensor, and only a few pages are read.
 *
 * Thread safety: pure functions. */
#ifndef VITD_CONTENT_ID_H
#define VITD_CONTENT_ID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vitd.h"

#define CONTENT_ID_LEN 64          /* hex digits of a derived id */
#define CONTENT_ID_UUID_MAX 128    /* longest client uuid accepted */

/* SHA-256 of data[0..n) into out. */
void content_id_sha256(const void *data, size_t n, uint8_t out[32]);
/* The fingerprint of a loaded model (see above). */
void content_id_model(const vitd_model *m, uint8_t out[32]);
/* The derived id of one image (see above) into out (CONTENT_ID_LEN + 1 bytes, NUL-terminated). */
void content_id_image(const uint8_t model_fp[32], size_t min_pixels, size_t max_pixels, const uint8_t *bytes,
                      size_t len, char out[CONTENT_ID_LEN + 1]);
/* The same digest as 32 bytes (the output cache's key), and its hex form (the derived id). */
void content_id_key(const uint8_t model_fp[32], size_t min_pixels, size_t max_pixels, const uint8_t *bytes,
                    size_t len, uint8_t out[32]);
void content_id_hex(const uint8_t key[32], char out[CONTENT_ID_LEN + 1]);
/* Whether s may name an image: 1..CONTENT_ID_UUID_MAX characters of [A-Za-z0-9._:+=-], not starting with '.'
 * (so it is one harmless path component). On false, err names the rule and the first bad character. */
bool content_id_uuid_ok(const char *s, size_t n, vitd_err *err);

#endif
