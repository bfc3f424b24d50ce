/* png.c — PNG through libpng's low-level API. libpng only unpacks sub-byte samples (png_set_packing) and undoes
 * Adam7; every conversion to RGB is ours, one row at a time, so that each PNG mode matches Pillow's
 * Image.open(f).convert("RGB").
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
 *
 * Memory (codecs.h). libpng allocates through png_mem_alloc, which refuses anything past a budget of a few rows
 * plus 2 MiB; every ancillary chunk but tRNS (none changes a pixel of convert("RGB")) and every unknown chunk is
 * skipped by libpng in small reads, never buffered, and no chunk may declare more bytes than the file holds. A
 * 44-byte file whose text chunk declares 2 GiB therefore fails at once as truncated, without allocating. The
 * only buffers sized by the image are ours: the RGB result and, for Adam7, the image in libpng's layout.
 *
 * No global state: the error handler longjmps into a context that lives on the caller's stack.
 */
#include "codecs.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

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
vitd_status png_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err) {
    if (len < 33) return vitd_fail(err, VITD_E_BAD_IMAGE, "png: truncated header (%zu bytes)", len);
    if (img_be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4) != 0)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: the first chunk is not a 13-byte IHDR");
    if (png_crc32(d + 12, 17) != img_be32(d + 29))
        return vitd_fail(err, VITD_E_BAD_IMAGE, "png: IHDR CRC mismatch");
    uint32_t pw = img_be32(d + 16), ph = img_be32(d + 20);
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

/* ---- PNG (libpng) ---- */

typedef struct {
    const uint8_t *data;
    size_t len, pos;   /* the memory reader */
    size_t budget;     /* bytes libpng may hold at once (png_mem_alloc) */
    size_t held;       /* bytes libpng holds now */
    int over_budget;   /* an allocation was refused: the failure is the file's, not the machine's */
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

/* libpng's allocator: malloc with a size header, refusing what would take libpng past its budget. */
static png_voidp png_mem_alloc(png_structp png, png_alloc_size_t n) {
    png_ctx *c = png_get_mem_ptr(png);
    if (n > c->budget || c->held > c->budget - n) {
        c->over_budget = 1;
        return NULL;
    }
    max_align_t *p = malloc(sizeof(max_align_t) + n);
    if (!p) return NULL;
    *(size_t *)p = n;
    c->held += n;
    return p + 1;
}

static void png_mem_free(png_structp png, png_voidp ptr) {
    if (!ptr) return;
    png_ctx *c = png_get_mem_ptr(png);
    max_align_t *p = (max_align_t *)ptr - 1;
    c->held -= *(size_t *)p;
    free(p);
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
        if (c->over_budget)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "png: %s (the file asks libpng for more than the %zu bytes a "
                             "%ux%u image needs)", c->msg, c->budget, w, h);
        vitd_status code = strstr(c->msg, "memory") ? VITD_E_NOMEM : VITD_E_BAD_IMAGE;
        return vitd_fail(err, code, "png: %s", c->msg);
    }
    /* libpng's own needs: a few rows at the widest pixel (8 bytes), zlib's window and state, small tables */
    c->budget = (size_t)w * 8 * 4 + ((size_t)2 << 20);
    c->png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning, c, png_mem_alloc,
                                      png_mem_free);
    if (!c->png) return vitd_fail(err, VITD_E_NOMEM, "png: cannot create the libpng reader");
    c->info = png_create_info_struct(c->png);
    if (!c->info) return vitd_fail(err, VITD_E_NOMEM, "png: cannot create the libpng info struct");
    png_set_read_fn(c->png, c, png_on_read);
    /* a CRC error in any chunk fails (Pillow checks the CRC of every chunk before the image data too) */
    png_set_crc_action(c->png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_set_benign_errors(c->png, 1);
    png_set_user_limits(c->png, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    /* no chunk holds more than the file; ancillary chunks (but tRNS) and unknown ones are skipped unread */
    png_set_chunk_malloc_max(c->png, c->len + 1);
    png_set_chunk_cache_max(c->png, 64);
    png_set_keep_unknown_chunks(c->png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
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

vitd_status png_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out,
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

