/* image.c — turns the bytes of an image file into 8-bit RGB exactly as Pillow's Image.open(f).convert("RGB").
 *
 * Owns format sniffing by magic bytes, header probing, the size limits checked before a single pixel is decoded,
 * and the dispatch to the three decoders of this folder (codecs.h): png.c (libpng), jpeg.c (libjpeg-turbo) and
 * stb.c (BMP, GIF, TGA, PNM, PSD and PIC through stb_image). Each decoder's opening comment says where it matches
 * Pillow, where it is stricter, and how its memory stays within the bound of codecs.h.
 */
#include "image.h"
#include "codecs.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* ---- formats ---- */

const char *image_format_name(image_format f) {
    switch (f) {
    case IMAGE_FMT_PNG: return "png";
    case IMAGE_FMT_JPEG: return "jpeg";
    case IMAGE_FMT_BMP: return "bmp";
    case IMAGE_FMT_GIF: return "gif";
    case IMAGE_FMT_TGA: return "tga";
    case IMAGE_FMT_PNM: return "pnm";
    case IMAGE_FMT_PSD: return "psd";
    case IMAGE_FMT_HDR: return "hdr";
    case IMAGE_FMT_PIC: return "pic";
    case IMAGE_FMT_WEBP: return "webp";
    case IMAGE_FMT_TIFF: return "tiff";
    case IMAGE_FMT_UNKNOWN: break;
    }
    return "unknown";
}

/* The TGA header test of stb_image (TGA has no magic): colour-map type, image type, sizes and depths that make
 * sense together. */
static int tga_header_ok(const uint8_t *d, size_t len) {
    if (len < 18) return 0;
    int cmtype = d[1], imtype = d[2], bpp = d[16];
    if (cmtype > 1) return 0;
    if (cmtype == 1) {
        if (imtype != 1 && imtype != 9) return 0;
        if (d[7] != 8 && d[7] != 15 && d[7] != 16 && d[7] != 24 && d[7] != 32) return 0;
        if (bpp != 8 && bpp != 16) return 0;
    } else {
        if (imtype != 2 && imtype != 3 && imtype != 10 && imtype != 11) return 0;
    }
    if (img_le16(d + 12) < 1 || img_le16(d + 14) < 1) return 0;
    return bpp == 8 || bpp == 15 || bpp == 16 || bpp == 24 || bpp == 32;
}

image_format image_sniff(const uint8_t *data, size_t len) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *d = data;
    if (!d) return IMAGE_FMT_UNKNOWN;
    if (len >= 8 && memcmp(d, png_sig, 8) == 0) return IMAGE_FMT_PNG;
    if (len >= 2 && d[0] == 0xFF && d[1] == 0xD8) return IMAGE_FMT_JPEG;
    if (len >= 4 && memcmp(d, "GIF8", 4) == 0) return IMAGE_FMT_GIF;
    if (len >= 2 && d[0] == 'B' && d[1] == 'M') return IMAGE_FMT_BMP;
    if (len >= 4 && memcmp(d, "8BPS", 4) == 0) return IMAGE_FMT_PSD;
    if (len >= 92 && img_be32(d) == 0x5380F634u && memcmp(d + 88, "PICT", 4) == 0) return IMAGE_FMT_PIC;
    if (len >= 3 && d[0] == 'P' && d[1] >= '1' && d[1] <= '7' &&
        (d[2] == ' ' || d[2] == '\t' || d[2] == '\n' || d[2] == '\r'))
        return IMAGE_FMT_PNM;
    if ((len >= 11 && memcmp(d, "#?RADIANCE\n", 11) == 0) || (len >= 7 && memcmp(d, "#?RGBE\n", 7) == 0))
        return IMAGE_FMT_HDR;
    if (len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return IMAGE_FMT_WEBP;
    if (len >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0 || memcmp(d, "II+\0", 4) == 0 ||
                     memcmp(d, "MM\0+", 4) == 0))
        return IMAGE_FMT_TIFF;
    if (tga_header_ok(d, len)) return IMAGE_FMT_TGA;
    return IMAGE_FMT_UNKNOWN;
}

/* ---- header probes ---- */

vitd_status image_probe(const uint8_t *data, size_t len, image_format *fmt, uint32_t *width, uint32_t *height,
                        vitd_err *err) {
    image_format f = image_sniff(data, len);
    uint32_t w = 0, h = 0;
    vitd_status st = VITD_OK;
    *fmt = f;
    *width = *height = 0;
    if (!data || len == 0) return vitd_fail(err, VITD_E_BAD_IMAGE, "empty image data (0 bytes)");
    switch (f) {
    case IMAGE_FMT_PNG: st = png_probe(data, len, &w, &h, err); break;
    case IMAGE_FMT_JPEG: st = jpeg_probe(data, len, &w, &h, err); break;
    case IMAGE_FMT_WEBP: case IMAGE_FMT_TIFF:
        return vitd_fail(err, VITD_E_UNSUPPORTED, "%s: format not supported (use png, jpeg, bmp, gif, tga, pnm)",
                         image_format_name(f));
    case IMAGE_FMT_HDR:
        return vitd_fail(err, VITD_E_UNSUPPORTED, "hdr: Radiance HDR (floating-point) images are not supported");
    case IMAGE_FMT_PNM:
        if (data[1] != '5' && data[1] != '6')
            return vitd_fail(err, VITD_E_UNSUPPORTED, "pnm: P%c files are not supported (only binary P5/P6)",
                             data[1]);
        /* fall through */
    case IMAGE_FMT_BMP: case IMAGE_FMT_GIF: case IMAGE_FMT_TGA: case IMAGE_FMT_PSD: case IMAGE_FMT_PIC:
        st = stb_probe(f, data, len, &w, &h, err);
        break;
    case IMAGE_FMT_UNKNOWN:
        if (len < 4) return vitd_fail(err, VITD_E_BAD_IMAGE, "unrecognised image format (%zu bytes)", len);
        return vitd_fail(err, VITD_E_BAD_IMAGE, "unrecognised image format (first bytes %02x %02x %02x %02x)",
                         data[0], data[1], data[2], data[3]);
    }
    if (st != VITD_OK) return st;
    *width = w;
    *height = h;
    return VITD_OK;
}

/* Zero sizes, sizes no decoder should be asked for, and sizes over the caller's max_pixels: refused from the
 * header, before any buffer is allocated. */
static vitd_status image_check_size(image_format f, uint32_t w, uint32_t h, size_t max_pixels, vitd_err *err) {
    const char *name = image_format_name(f);
    uint64_t n = (uint64_t)w * h;
    if (w == 0 || h == 0) return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: zero width or height (%ux%u)", name, w, h);
    if (max_pixels && n > (uint64_t)max_pixels)
        return vitd_fail(err, VITD_E_TOO_LARGE, "%s: %ux%u = %llu pixels exceeds max_pixels %zu", name, w, h,
                         (unsigned long long)n, max_pixels);
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || n > IMAGE_MAX_PIXELS)
        return vitd_fail(err, VITD_E_TOO_LARGE, "%s: %ux%u exceeds the absolute limit (%u per side, %llu pixels)",
                         name, w, h, (unsigned)IMAGE_MAX_SIDE, (unsigned long long)IMAGE_MAX_PIXELS);
    return VITD_OK;
}

/* ---- public entry points ---- */

vitd_status image_decode(const uint8_t *data, size_t len, size_t max_pixels, vitd_image *out, vitd_err *err) {
    image_format f;
    uint32_t w, h;
    memset(out, 0, sizeof *out);
    vitd_status st = image_probe(data, len, &f, &w, &h, err);
    if (st != VITD_OK) return st;
    st = image_check_size(f, w, h, max_pixels, err);
    if (st != VITD_OK) return st;
    switch (f) {
    case IMAGE_FMT_PNG: return png_decode(data, len, w, h, out, err);
    case IMAGE_FMT_JPEG: return jpeg_decode(data, len, w, h, out, err);
    default: return stb_decode(f, data, len, w, h, out, err);
    }
}

vitd_status image_read_file(const char *path, uint8_t **data, size_t *len, vitd_err *err) {
    char *buf = NULL;
    vitd_status st = vitd_read_file(path, path, IMAGE_MAX_FILE_BYTES, &buf, len, err);
    *data = (uint8_t *)buf;
    return st;
}

void image_release(vitd_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}
