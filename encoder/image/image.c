/* image.c — turns the bytes of an image file into 8-bit RGB exactly as Pillow's Image.open(f).convert("RGB").
 *
 * Owns: format sniffing by magic bytes, header probing (PNG IHDR, JPEG SOFn, stb_image's info for the rest), the
 * size limits checked before a single pixel is decoded, and three decoders:
 *   - PNG through libpng's low-level API. libpng only unpacks sub-byte samples (png_set_packing) and undoes
 *     Adam7; every conversion to RGB is ours, one row at a time, so that each PNG mode matches Pillow (below).
 *   - JPEG through libjpeg-turbo with Pillow's settings (JpegDecode.c without draft mode): JDCT_ISLOW, fancy
 *     upsampling, block smoothing, libjpeg's own guess of the colour space, out_color_space JCS_RGB for
 *     YCbCr/RGB files and JCS_GRAYSCALE (then replicated) for gray ones. The fixtures decode identically with
 *     Debian's libjpeg-turbo 2.1.5 and with the 3.1.4 that Pillow 12.3's wheel bundles.
 *   - BMP, GIF (first frame), TGA, PNM (P5/P6), PSD and PIC through stb_image, after our own check that the
 *     pixel data is complete (stb reads zeros past the end of a buffer instead of failing).
 *
 * What Pillow does, per PNG mode (verified on crafted files with Pillow 9.4 here and Pillow 12.3, the version of
 * MODEL.md, on the GPU machine; both agree except where noted; tests/fixtures/images holds the files):
 *   gray 1-bit        mode "1": 0 -> 0, 1 -> 255
 *   gray 2/4-bit      mode "L" through rawmodes L;2 / L;4: scaled, v * 85 / v * 17
 *   gray 8-bit        L, replicated
 *   gray 16-bit       mode I (Pillow >= 10: I;16): saturated, v > 255 ? 255 : v (NOT scaled)
 *   RGB 16-bit        RGB;16B: high byte of each sample
 *   gray+alpha 8      LA: gray replicated, alpha dropped
 *   gray+alpha 16     RGBA from LA;16B: high byte of gray replicated, alpha dropped
 *   RGBA 8 / 16       alpha dropped (never composited); 16-bit keeps the high byte
 *   palette 1/2/4/8   P: palette lookup; an index past the end of PLTE gives black in Pillow 12.3 (Pillow 9.4
 *                     gave (i, i, i) from its gray-ramp palette); we follow 12.3
 *   tRNS (any type)   ignored: it only sets info["transparency"], which convert("RGB") drops
 *   Adam7             de-interlaced; same pixels
 * Stricter than Pillow: a CRC error in any PNG chunk fails (Pillow 12.3 does not check the CRC of IDAT), and the
 * whole file up to IEND must be there (Pillow stops after the image data).
 * JPEG: a libjpeg warning that means missing or damaged data fails the decode (Pillow fails on truncation and
 * silently accepts corrupt scans; we are stricter). Warnings that touch no pixel are ignored: unknown Adobe
 * transform or JFIF revision, and extraneous bytes just before EOI (all scans are decoded by then). CMYK/YCCK,
 * 12-bit and lossless JPEGs are refused. No EXIF rotation is applied, as none is applied to a PIL.Image.
 * stb_image formats match Pillow for 8-bit BMP, TGA, PPM/PGM (maxval 255) and GIFs without transparency.
 * Differences (exact parity is promised for PNG and JPEG only): PNM with a maxval other than 255 and 16-bit PSD
 * are refused (stb_image would not rescale maxval < 255 as Pillow does, and its 16-bit PNM samples come out
 * byte-swapped); transparent GIF pixels come out black (Pillow shows their palette colour); a truncated PSD or
 * PIC is not detected (stb_image reads zeros past the end).
 *
 * No global state: the libpng and libjpeg error handlers longjmp into a context that lives on the caller's stack.
 */
#include "image.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <stb_image.h>

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

static uint32_t rd_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t rd_be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t rd_le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
static uint32_t rd_le32(const uint8_t *p) {
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
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
    if (rd_le16(d + 12) < 1 || rd_le16(d + 14) < 1) return 0;
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
    if (len >= 92 && rd_be32(d) == 0x5380F634u && memcmp(d + 88, "PICT", 4) == 0) return IMAGE_FMT_PIC;
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

/* CRC-32 of PNG chunks (ISO 3309), bitwise: it only ever checks the 17 bytes of IHDR here. */
static uint32_t png_crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

/* Reads the IHDR that must follow the signature; checks its CRC and that depth and colour type go together. */
static vitd_status png_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err) {
    if (len < 33) return vitd_fail(err, VITD_E_BAD_IMAGE, "png: truncated header (%zu bytes)", len);
    if (rd_be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4) != 0)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: the first chunk is not a 13-byte IHDR");
    if (png_crc32(d + 12, 17) != rd_be32(d + 29))
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: IHDR CRC mismatch");
    uint32_t pw = rd_be32(d + 16), ph = rd_be32(d + 20);
    int depth = d[24], ctype = d[25];
    int ok;
    switch (ctype) {
    case 0: ok = depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16; break;
    case 3: ok = depth == 1 || depth == 2 || depth == 4 || depth == 8; break;
    case 2: case 4: case 6: ok = depth == 8 || depth == 16; break;
    default: ok = 0;
    }
    if (!ok) return vitd_fail(err, VITD_E_BAD_IMAGE, "png: invalid bit depth %d for colour type %d", depth, ctype);
    if (d[26] != 0 || d[27] != 0 || d[28] > 1)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: invalid compression/filter/interlace method in IHDR");
    if (pw > 0x7FFFFFFFu || ph > 0x7FFFFFFFu)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: IHDR size %ux%u out of range", pw, ph);
    *w = pw;
    *h = ph;
    return VITD_OK;
}

/* Walks the JPEG marker segments up to the first SOFn and reads its size; stops at SOS or EOI (no frame). */
static vitd_status jpeg_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err) {
    size_t pos = 2;
    for (;;) {
        if (pos >= len) return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated header (%zu bytes)", len);
        if (d[pos] != 0xFF)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: expected a marker at offset %zu, found 0x%02x", pos,
                             d[pos]);
        while (pos < len && d[pos] == 0xFF) pos++; /* fill bytes */
        if (pos >= len) return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated header (%zu bytes)", len);
        int m = d[pos++];
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue; /* markers without a length */
        if (m == 0xD8 || m == 0xD9 || m == 0xDA || m == 0x00)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: marker 0x%02x before any frame header (SOF)", m);
        if (len - pos < 2) return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated header (%zu bytes)", len);
        size_t seg = rd_be16(d + pos);
        if (seg < 2)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: bad segment length %zu at offset %zu", seg, pos);
        int is_sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (is_sof) {
            if (seg < 8 || len - pos < 8)
                return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated frame header (SOF%d)", m - 0xC0);
            *h = rd_be16(d + pos + 3);
            *w = rd_be16(d + pos + 5);
            return VITD_OK;
        }
        if (len - pos < seg) return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated header (%zu bytes)", len);
        pos += seg;
    }
}

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
    case IMAGE_FMT_BMP: case IMAGE_FMT_GIF: case IMAGE_FMT_TGA: case IMAGE_FMT_PSD: case IMAGE_FMT_PIC: {
        int x = 0, y = 0, comp = 0;
        if (len > INT_MAX)
            return vitd_fail(err, VITD_E_TOO_LARGE, "%s: %zu bytes is more than stb_image reads",
                             image_format_name(f), len);
        if (!stbi_info_from_memory(data, (int)len, &x, &y, &comp) || x <= 0 || y <= 0) {
            const char *why = stbi_failure_reason();
            return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: bad header (%s)", image_format_name(f), why ? why : "?");
        }
        w = (uint32_t)x;
        h = (uint32_t)y;
        break;
    }
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

/* ---- PNG (libpng) ---- */

typedef struct {
    const uint8_t *data;
    size_t len, pos;   /* the memory reader */
    jmp_buf jmp;       /* where png_on_error returns to */
    char msg[200];     /* libpng's error text */
    png_structp png;
    png_infop info;
    uint8_t *native;   /* one row as libpng gives it, or the whole image when interlaced */
    png_bytep *rows;   /* [height] pointers into native (interlaced only) */
    uint8_t *rgb;      /* the result */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "error");
    longjmp(c->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* warnings and benign errors (bad iCCP, palette index past PLTE, ...) change no pixel */
}

static void png_on_read(png_structp png, png_bytep out, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "truncated data");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

/* One row as libpng delivers it (sub-byte samples unpacked to one byte each, 16-bit big-endian) to RGB, the way
 * Pillow's PNG modes convert (table at the top of this file). lut: [256][3] palette, black past PLTE's end. */
static void png_row_to_rgb(const uint8_t *s, uint8_t *d, uint32_t w, int ctype, int depth, const uint8_t *lut) {
    uint32_t x;
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        if (depth == 16) {
            for (x = 0; x < w; x++, d += 3) d[0] = d[1] = d[2] = s[2 * x] ? 255 : s[2 * x + 1];
        } else {
            int scale = depth == 8 ? 1 : 255 / ((1 << depth) - 1); /* 1-bit 255, 2-bit 85, 4-bit 17 */
            for (x = 0; x < w; x++, d += 3) d[0] = d[1] = d[2] = (uint8_t)(s[x] * scale);
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        for (x = 0; x < w; x++, d += 3) d[0] = d[1] = d[2] = depth == 16 ? s[4 * x] : s[2 * x];
        break;
    case PNG_COLOR_TYPE_RGB:
        if (depth == 16) {
            for (x = 0; x < w; x++, d += 3, s += 6) { d[0] = s[0]; d[1] = s[2]; d[2] = s[4]; }
        } else {
            memcpy(d, s, (size_t)w * 3);
        }
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA: {
        int step = depth == 16 ? 8 : 4, k = depth == 16 ? 2 : 1;
        for (x = 0; x < w; x++, d += 3, s += step) { d[0] = s[0]; d[1] = s[k]; d[2] = s[2 * k]; }
        break;
    }
    case PNG_COLOR_TYPE_PALETTE:
        for (x = 0; x < w; x++, d += 3) memcpy(d, lut + 3 * s[x], 3);
        break;
    }
}

/* The libpng part of png_decode: everything between setjmp and the last row. Buffers go into *c, which the
 * caller frees on every path; on success c->rgb holds w*h*3 bytes. */
static vitd_status png_decode_run(png_ctx *c, uint32_t w, uint32_t h, vitd_err *err) {
    uint8_t lut[256 * 3];
    if (setjmp(c->jmp)) {
        vitd_status code = strstr(c->msg, "memory") ? VITD_E_NOMEM : VITD_E_BAD_IMAGE;
        return vitd_fail(err, code, "png: %s", c->msg);
    }
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!c->png) return vitd_fail(err, VITD_E_NOMEM, "png: cannot create the libpng reader");
    c->info = png_create_info_struct(c->png);
    if (!c->info) return vitd_fail(err, VITD_E_NOMEM, "png: cannot create the libpng info struct");
    png_set_read_fn(c->png, c, png_on_read);
    /* a CRC error in any chunk fails (Pillow checks the CRC of every chunk before the image data too) */
    png_set_crc_action(c->png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_set_benign_errors(c->png, 1);
    png_set_user_limits(c->png, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    png_read_info(c->png, c->info);

    png_uint_32 pw = 0, ph = 0;
    int depth = 0, ctype = 0, interlace = 0;
    png_get_IHDR(c->png, c->info, &pw, &ph, &depth, &ctype, &interlace, NULL, NULL);
    if (pw != w || ph != h) return vitd_fail(err, VITD_E_BAD_IMAGE, "png: IHDR changed while reading");
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int n = 0;
        memset(lut, 0, sizeof lut);
        if (png_get_PLTE(c->png, c->info, &plte, &n) && plte) {
            for (int i = 0; i < n && i < 256; i++) {
                lut[3 * i] = plte[i].red;
                lut[3 * i + 1] = plte[i].green;
                lut[3 * i + 2] = plte[i].blue;
            }
        }
    }
    if (depth < 8) png_set_packing(c->png); /* one byte per sample, values unscaled */
    int passes = png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);

    int channels = png_get_channels(c->png, c->info);
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    if (rowbytes != (size_t)w * channels * (depth == 16 ? 2 : 1))
        return vitd_fail(err, VITD_E_INTERNAL, "png: unexpected row size %zu for %u pixels", rowbytes, w);
    c->rgb = malloc((size_t)w * h * 3);
    if (!c->rgb) return vitd_fail(err, VITD_E_NOMEM, "png: cannot allocate %ux%u RGB", w, h);
    if (passes == 1) {
        c->native = malloc(rowbytes);
        if (!c->native) return vitd_fail(err, VITD_E_NOMEM, "png: cannot allocate a %zu-byte row", rowbytes);
        for (uint32_t y = 0; y < h; y++) {
            png_read_row(c->png, c->native, NULL);
            png_row_to_rgb(c->native, c->rgb + (size_t)y * w * 3, w, ctype, depth, lut);
        }
    } else { /* Adam7 fills every row in seven passes: keep the whole image in libpng's layout */
        c->native = malloc(rowbytes * h);
        c->rows = malloc(sizeof *c->rows * h);
        if (!c->native || !c->rows)
            return vitd_fail(err, VITD_E_NOMEM, "png: cannot allocate %zu bytes for an interlaced image",
                             rowbytes * h);
        for (uint32_t y = 0; y < h; y++) c->rows[y] = c->native + (size_t)y * rowbytes;
        png_read_image(c->png, c->rows);
        for (uint32_t y = 0; y < h; y++)
            png_row_to_rgb(c->rows[y], c->rgb + (size_t)y * w * 3, w, ctype, depth, lut);
    }
    png_read_end(c->png, NULL); /* reads up to IEND: a file cut after the pixels is still truncated */
    return VITD_OK;
}

static vitd_status png_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out,
                              vitd_err *err) {
    png_ctx c;
    memset(&c, 0, sizeof c);
    c.data = data;
    c.len = len;
    vitd_status st = png_decode_run(&c, w, h, err);
    if (c.png) png_destroy_read_struct(&c.png, c.info ? &c.info : NULL, NULL);
    free(c.rows);
    free(c.native);
    if (st != VITD_OK) {
        free(c.rgb);
        return st;
    }
    out->width = w;
    out->height = h;
    out->rgb = c.rgb;
    return VITD_OK;
}

/* ---- JPEG (libjpeg-turbo) ---- */

typedef struct {
    struct jpeg_error_mgr pub; /* first: libjpeg passes &pub around as cinfo->err */
    jmp_buf jmp;
    int code;                  /* libjpeg's message code of the failure */
    char msg[JMSG_LENGTH_MAX];
} jpeg_err_mgr;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    jpeg_err_mgr jerr;
    int created;
    uint8_t *row; /* one gray row (gray files only) */
    uint8_t *rgb; /* the result */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr ci) {
    jpeg_err_mgr *e = (jpeg_err_mgr *)ci->err;
    e->code = e->pub.msg_code;
    e->pub.format_message(ci, e->msg);
    longjmp(e->jmp, 1);
}

/* libjpeg reports recoverable problems as warnings (level -1) and goes on with gray or zero data; most of them
 * mean the pixels are wrong, so they fail the decode like an error. */
static void jpeg_on_message(j_common_ptr ci, int level) {
    jpeg_err_mgr *e = (jpeg_err_mgr *)ci->err;
    if (level >= 0) return; /* trace messages */
    switch (e->pub.msg_code) {
    case JWRN_ADOBE_XFORM: /* unknown transform code: libjpeg falls back to its default guess, as in Pillow */
    case JWRN_JFIF_MAJOR:  /* unknown JFIF revision: metadata only */
        return;
    case JWRN_EXTRANEOUS_DATA: /* junk before EOI: every scan is decoded already */
        if (e->pub.msg_parm.i[1] == 0xD9) return;
        break;
    default:
        break;
    }
    jpeg_on_error(ci);
}

static void jpeg_on_output(j_common_ptr ci) { (void)ci; }

/* The status for libjpeg's failure code: what libjpeg cannot do is UNSUPPORTED, a truncated or damaged file is
 * BAD_IMAGE. */
static vitd_status jpeg_fail(const jpeg_err_mgr *e, vitd_err *err) {
    switch (e->code) {
    case JERR_BAD_PRECISION: case JERR_SOF_UNSUPPORTED: case JERR_ARITH_NOTIMPL: case JERR_NOT_COMPILED:
    case JERR_CONVERSION_NOTIMPL:
        return vitd_fail(err, VITD_E_UNSUPPORTED, "jpeg: %s", e->msg);
    case JERR_OUT_OF_MEMORY:
        return vitd_fail(err, VITD_E_NOMEM, "jpeg: %s", e->msg);
    case JWRN_JPEG_EOF:
        return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated data (%s)", e->msg);
    default:
        return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: %s", e->msg);
    }
}

/* The libjpeg part of jpeg_decode. Buffers go into *c, which the caller frees on every path. */
static vitd_status jpeg_decode_run(jpeg_ctx *c, const uint8_t *data, size_t len, uint32_t w, uint32_t h,
                                   vitd_err *err) {
    c->cinfo.err = jpeg_std_error(&c->jerr.pub);
    c->jerr.pub.error_exit = jpeg_on_error;
    c->jerr.pub.emit_message = jpeg_on_message;
    c->jerr.pub.output_message = jpeg_on_output;
    if (setjmp(c->jerr.jmp)) return jpeg_fail(&c->jerr, err);
    c->created = 1; /* jpeg_destroy_decompress is safe on a zeroed struct should creation fail half-way */
    jpeg_create_decompress(&c->cinfo);
    jpeg_mem_src(&c->cinfo, data, (unsigned long)len);
    jpeg_read_header(&c->cinfo, TRUE);

    int gray = 0;
    switch (c->cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: gray = 1; break;
    case JCS_YCbCr: case JCS_RGB: break;
    case JCS_CMYK: case JCS_YCCK:
        return vitd_fail(err, VITD_E_UNSUPPORTED,
                         "jpeg: CMYK/YCCK JPEG is not supported (convert it to RGB first)");
    default:
        return vitd_fail(err, VITD_E_UNSUPPORTED, "jpeg: %d-component JPEG with an unknown colour space",
                         c->cinfo.num_components);
    }
    if (c->cinfo.image_width != w || c->cinfo.image_height != h)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: frame size %ux%u differs from the header's %ux%u",
                         c->cinfo.image_width, c->cinfo.image_height, w, h);
    /* Pillow's settings (JpegDecode.c, draft mode off): libjpeg's defaults, spelled out */
    c->cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    c->cinfo.dct_method = JDCT_ISLOW;
    c->cinfo.do_fancy_upsampling = TRUE;
    c->cinfo.do_block_smoothing = TRUE;
    c->cinfo.scale_num = c->cinfo.scale_denom = 1;
    jpeg_start_decompress(&c->cinfo);
    if (c->cinfo.output_width != w || c->cinfo.output_height != h || c->cinfo.output_components != (gray ? 1 : 3))
        return vitd_fail(err, VITD_E_INTERNAL, "jpeg: libjpeg gives %ux%ux%d, expected %ux%ux%d",
                         c->cinfo.output_width, c->cinfo.output_height, c->cinfo.output_components, w, h,
                         gray ? 1 : 3);
    c->rgb = malloc((size_t)w * h * 3);
    if (!c->rgb) return vitd_fail(err, VITD_E_NOMEM, "jpeg: cannot allocate %ux%u RGB", w, h);
    if (gray && !(c->row = malloc(w))) return vitd_fail(err, VITD_E_NOMEM, "jpeg: cannot allocate a row");
    while (c->cinfo.output_scanline < h) {
        uint32_t y = c->cinfo.output_scanline;
        uint8_t *dst = c->rgb + (size_t)y * w * 3;
        JSAMPROW row = gray ? c->row : dst;
        if (jpeg_read_scanlines(&c->cinfo, &row, 1) != 1)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: no data for row %u", y);
        if (gray)
            for (uint32_t x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = c->row[x];
    }
    jpeg_finish_decompress(&c->cinfo); /* reads up to EOI: a file cut after the last scan is still truncated */
    return VITD_OK;
}

static vitd_status jpeg_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out,
                               vitd_err *err) {
    jpeg_ctx c;
    memset(&c, 0, sizeof c);
    if (len > ULONG_MAX) return vitd_fail(err, VITD_E_TOO_LARGE, "jpeg: %zu bytes is too large", len);
    vitd_status st = jpeg_decode_run(&c, data, len, w, h, err);
    if (c.created) jpeg_destroy_decompress(&c.cinfo);
    free(c.row);
    if (st != VITD_OK) {
        free(c.rgb);
        return st;
    }
    out->width = w;
    out->height = h;
    out->rgb = c.rgb;
    return VITD_OK;
}

/* ---- stb_image formats ---- */

/* Parses a binary PNM header (P5/P6) as stb_image does: width, height, maxval with whitespace and # comments
 * between them, then one whitespace byte. Returns the offset of the pixels, or 0 if the header does not parse
 * (stb_image then says what is wrong). */
static size_t pnm_header(const uint8_t *d, size_t len, uint64_t *maxval) {
    size_t pos = 2;
    uint64_t v[3] = {0, 0, 0};
    for (int k = 0; k < 3; k++) {
        for (;;) { /* whitespace and # comments */
            while (pos < len && (d[pos] == ' ' || (d[pos] >= '\t' && d[pos] <= '\r'))) pos++;
            if (pos < len && d[pos] == '#') {
                while (pos < len && d[pos] != '\n' && d[pos] != '\r') pos++;
                continue;
            }
            break;
        }
        if (pos >= len || d[pos] < '0' || d[pos] > '9') return 0;
        while (pos < len && d[pos] >= '0' && d[pos] <= '9' && v[k] < (1u << 30))
            v[k] = v[k] * 10 + (uint64_t)(d[pos++] - '0');
    }
    *maxval = v[2];
    return pos + 1;
}

/* Bytes an uncompressed BMP needs (offset of the pixels + padded rows); 0 if compressed or unknown. */
static uint64_t bmp_needed(const uint8_t *d, size_t len, uint32_t w, uint32_t h) {
    if (len < 30) return 0;
    uint32_t off = rd_le32(d + 10), hsz = rd_le32(d + 14), bpp, compression = 0;
    if (hsz == 12) {
        bpp = rd_le16(d + 24);
    } else if (hsz >= 40 && len >= 34) {
        bpp = rd_le16(d + 28);
        compression = rd_le32(d + 30);
    } else {
        return 0;
    }
    if (compression != 0 && compression != 3 && compression != 6) return 0; /* RLE: size unknown in advance */
    uint64_t row = ((uint64_t)bpp * w + 31) / 32 * 4;
    return (uint64_t)off + row * h;
}

/* Bytes a TGA needs: header, id, colour map (only when indexed, as stb_image skips it) and the pixels, walking
 * the run-length packets of compressed files. Returns UINT64_MAX when a packet header lies past the end. */
static uint64_t tga_needed(const uint8_t *d, size_t len, uint32_t w, uint32_t h) {
    int indexed = d[1] == 1, rle = d[2] >= 8;
    uint64_t pb = (d[16] + 7u) / 8, pos = 18 + (uint64_t)d[0];
    if (indexed) pos += rd_le16(d + 3) + (uint64_t)rd_le16(d + 5) * ((d[7] + 7u) / 8);
    if (!rle) return pos + (uint64_t)w * h * pb;
    uint64_t left = (uint64_t)w * h;
    while (left > 0) {
        if (pos >= len) return UINT64_MAX;
        uint8_t b = d[pos++];
        uint64_t n = (b & 0x7Fu) + 1;
        pos += (b & 0x80) ? pb : n * pb;
        left = n >= left ? 0 : left - n;
    }
    return pos;
}

/* Whether the first image of a GIF is complete: walks extension blocks and the first image's sub-blocks. */
static int gif_first_frame_complete(const uint8_t *d, size_t len) {
    size_t pos = 13;
    if (len < 13) return 0;
    if (d[10] & 0x80) pos += (size_t)3 << ((d[10] & 7) + 1);
    for (;;) {
        if (pos >= len) return 0;
        uint8_t b = d[pos++];
        if (b == 0x21) {
            pos++; /* label */
        } else if (b == 0x2C) {
            if (len - pos < 10) return 0;
            uint8_t flags = d[pos + 8];
            pos += 9;
            if (flags & 0x80) pos += (size_t)3 << ((flags & 7) + 1);
            pos++; /* LZW minimum code size */
        } else {
            return 0; /* trailer or garbage before the first image */
        }
        for (;;) { /* data sub-blocks up to the empty one */
            if (pos >= len) return 0;
            uint8_t n = d[pos++];
            if (n == 0) break;
            pos += n;
        }
        if (b == 0x2C) return pos <= len;
    }
}

/* Decodes through stb_image into 3-channel RGB (stb replicates gray and drops alpha, as Pillow does). */
static vitd_status stb_decode(image_format f, const uint8_t *data, size_t len, uint32_t w, uint32_t h,
                              vitd_image *out, vitd_err *err) {
    const char *name = image_format_name(f);
    uint64_t need = 0;
    int complete = 1;
    if (f == IMAGE_FMT_PNM) {
        /* stb_image neither rescales maxval < 255 (Pillow does) nor reads 16-bit samples right (byte-swapped,
         * garbage in 8-bit output): only maxval 255 decodes as Pillow would, the rest is refused */
        uint64_t maxval = 0;
        size_t off = pnm_header(data, len, &maxval);
        if (off && maxval != 255)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "pnm: maxval %llu is not supported (only 255)",
                             (unsigned long long)maxval);
        if (off) need = off + (uint64_t)w * h * (data[1] == '6' ? 3 : 1);
    }
    if (f == IMAGE_FMT_PSD && stbi_is_16_bit_from_memory(data, (int)len))
        return vitd_fail(err, VITD_E_UNSUPPORTED, "psd: 16-bit samples are not supported");
    if (f == IMAGE_FMT_BMP) need = bmp_needed(data, len, w, h);
    if (f == IMAGE_FMT_TGA) need = tga_needed(data, len, w, h);
    if (f == IMAGE_FMT_GIF) complete = gif_first_frame_complete(data, len);
    if (need > len || !complete)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: truncated data (%zu bytes)", name, len);

    int x = 0, y = 0, comp = 0;
    uint8_t *px = stbi_load_from_memory(data, (int)len, &x, &y, &comp, 3);
    if (!px) {
        const char *why = stbi_failure_reason();
        vitd_status code = why && strstr(why, "outofmem") ? VITD_E_NOMEM : VITD_E_BAD_IMAGE;
        return vitd_fail(err, code, "%s: %s", name, why ? why : "stb_image failed");
    }
    if ((uint32_t)x != w || (uint32_t)y != h) {
        stbi_image_free(px);
        return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: decoded %dx%d, header said %ux%u", name, x, y, w, h);
    }
    /* our own copy: image_release() frees with free(), stb_image's allocator is its own business */
    size_t n = (size_t)w * h * 3;
    out->rgb = malloc(n);
    if (!out->rgb) {
        stbi_image_free(px);
        return vitd_fail(err, VITD_E_NOMEM, "%s: cannot allocate %ux%u RGB", name, w, h);
    }
    memcpy(out->rgb, px, n);
    stbi_image_free(px);
    out->width = w;
    out->height = h;
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
