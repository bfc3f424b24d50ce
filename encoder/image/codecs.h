/* codecs.h — internal to encoder/image/: the decoders image.c dispatches to, one file each.
 *
 *   png.c   PNG through libpng's low-level API, conversions to RGB ours (Pillow's PNG modes)
 *   jpeg.c  JPEG through libjpeg-turbo with Pillow's settings
 *   stb.c   BMP, GIF, TGA, PNM, PSD and PIC through stb_image, after our own completeness checks
 *
 * Each *_probe reads only the header (width, height); each *_decode is called after image.c has checked that size
 * against the limits, and fills out->rgb (w*h*3, malloc'd) or fails with a message naming the format.
 *
 * Memory. Every decoder's allocations are bounded by the declared size (already limited by max_pixels) plus a
 * small constant, whatever the file's chunk or segment lengths say: libpng allocates through a budgeted allocator
 * and skips every ancillary chunk without buffering it, libjpeg-turbo's virtual arrays are capped by
 * max_memory_to_use and its scans counted, and stb_image is only handed files whose structure was walked first.
 * The bound of each is IMAGE_DECODER_BYTES(w, h) (tests/test_image.c measures the peak against it).
 */
#ifndef VITD_IMAGE_CODECS_H
#define VITD_IMAGE_CODECS_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* What a decoder may hold at its peak for a w x h image, output included: 24 bytes per pixel (stb_image's GIF
 * holds 9, its conversion 3 more, our copy 3; a progressive JPEG's coefficients 6 with the output 3) plus 64 MiB
 * for row buffers, tables and zlib. */
#define IMAGE_DECODER_BYTES(w, h) ((uint64_t)(w) * (uint64_t)(h) * 24u + ((uint64_t)64 << 20))

static inline uint32_t img_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint32_t img_be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t img_le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
static inline uint32_t img_le32(const uint8_t *p) {
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

vitd_status png_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err);
vitd_status png_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out, vitd_err *err);

vitd_status jpeg_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err);
vitd_status jpeg_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out, vitd_err *err);

/* The stb_image formats: the header through stbi_info (a top-down BMP's negative height taken as its size). */
vitd_status stb_probe(image_format f, const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err);
vitd_status stb_decode(image_format f, const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out,
                       vitd_err *err);

#endif
