/* image.h — decoding image files into 8-bit RGB exactly as the Hugging Face processor sees them.
 *
 * PNG goes through libpng, JPEG through libjpeg-turbo (the decoder Pillow uses, so pixels match the reference
 * bit for bit), everything else stb_image reads (BMP, GIF, TGA, PNM, PSD, HDR, PIC) through stb_image. Each mode
 * is converted to RGB the way Pillow's convert("RGB") does it (MODEL.md 2.1): alpha dropped (never composited),
 * palette looked up (tRNS ignored), gray replicated, 16-bit gray saturated at 255, 16-bit colour keeps the high
 * byte. What cannot be decoded correctly (CMYK/YCCK JPEG, 12-bit JPEG, ...) is refused, never decoded into wrong
 * colours.
 *
 * The header is read first and the declared width x height is checked against max_pixels before any pixel is
 * decoded (decompression bombs). Truncated and corrupt data give VITD_E_BAD_IMAGE with a message saying what is
 * wrong. All functions are thread-safe (no shared state); none reads outside [data, data+len).
 *
 * Exact parity with Pillow is promised (and tested bit for bit) for PNG and JPEG; image.c's opening comment lists
 * what Pillow does per PNG mode and where the stb_image formats differ from Pillow.
 */
#ifndef VITD_IMAGE_H
#define VITD_IMAGE_H

#include "vitd.h"

typedef enum {
    IMAGE_FMT_UNKNOWN = 0,
    IMAGE_FMT_PNG,
    IMAGE_FMT_JPEG,
    IMAGE_FMT_BMP,
    IMAGE_FMT_GIF,
    IMAGE_FMT_TGA,
    IMAGE_FMT_PNM,
    IMAGE_FMT_PSD,
    IMAGE_FMT_HDR,
    IMAGE_FMT_PIC,
    IMAGE_FMT_WEBP,   /* recognised only to refuse it clearly */
    IMAGE_FMT_TIFF,   /* recognised only to refuse it clearly */
} image_format;

/* Absolute limits, applied even when max_pixels is 0: no side over 2^20, no more than 2^30 pixels. */
#define IMAGE_MAX_SIDE (1u << 20)
#define IMAGE_MAX_PIXELS (1ull << 30)
/* Largest file image_read_file() reads (VITD_E_TOO_LARGE beyond). */
#define IMAGE_MAX_FILE_BYTES ((size_t)1 << 32)

/* 8-bit RGB, row-major, 3 bytes per pixel, no row padding. */
typedef struct {
    uint32_t width, height;
    uint8_t *rgb; /* [height][width][3]; owned, free with image_release() */
} vitd_image;

/* Lower-case format name ("png", "jpeg", ...). */
const char *image_format_name(image_format f);

/* Guesses the format from the magic bytes (no decoding). */
image_format image_sniff(const uint8_t *data, size_t len);

/* Reads only the header: format, width and height. Fails with VITD_E_BAD_IMAGE on unknown or corrupt headers. */
vitd_status image_probe(const uint8_t *data, size_t len, image_format *fmt, uint32_t *width, uint32_t *height,
                        vitd_err *err);

/* Decodes to RGB. max_pixels (0 = only the absolute limits) is checked against the header before decoding
 * (VITD_E_TOO_LARGE). On success *out owns the pixels; free with image_release(). On failure *out is zeroed.
 * Errors: VITD_E_BAD_IMAGE (unknown, corrupt or truncated data), VITD_E_UNSUPPORTED (WebP, TIFF, HDR, CMYK or
 * 12-bit JPEG, ...), VITD_E_TOO_LARGE, VITD_E_NOMEM. */
vitd_status image_decode(const uint8_t *data, size_t len, size_t max_pixels, vitd_image *out, vitd_err *err);

/* Reads a whole file into memory (for the CLI and tests). On success *data is malloc'd; free() it. */
vitd_status image_read_file(const char *path, uint8_t **data, size_t *len, vitd_err *err);

/* Frees the pixels and zeroes *img; accepts NULL and an already released image. */
void image_release(vitd_image *img);

#endif
