/* stb.c — BMP, GIF (first frame), TGA, PNM (P5/P6), PSD and PIC through stb_image, after our own check that the
 * pixel data is complete (stb_image reads zeros past the end of a buffer instead of failing).
 *
 * These match Pillow's Image.open(f).convert("RGB") for 8-bit BMP (bottom-up and top-down), TGA, PPM/PGM (maxval
 * 255), 8-bit RGB PSD and GIFs without transparency. Differences (exact parity is promised for PNG and JPEG only):
 * PNM with a maxval other than 255 and 16-bit PSD are refused (stb_image would not rescale maxval < 255 as Pillow
 * does, its 16-bit PNM samples come out byte-swapped, and Pillow cannot open 16-bit PSD at all); transparent GIF
 * pixels come out black (Pillow shows their palette colour); a truncated PSD or PIC is not detected (stb_image
 * reads zeros past the end). A GIF whose first image's LZW data stops short of its last pixel is refused as
 * truncated, as Pillow refuses it (stb_image would leave those pixels as they were). Refused because stb_image's
 * pixels would differ from Pillow's (stb_refuse_variant, and GIF below): PSD of other than 3 channels, 16-bit BMP,
 * right-to-left TGA or one whose colour map starts past entry 0, a GIF whose first image does not cover the
 * logical screen.
 *
 * Memory (codecs.h): stb_image's buffers are sized by the header's width and height (GIF: 9 bytes a pixel of the
 * logical screen), which image.c has checked; colour maps are at most 256 KiB. Nothing else is sized by a field.
 */
#include "codecs.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

vitd_status stb_probe(image_format f, const uint8_t *data, size_t len, uint32_t *w, uint32_t *h, vitd_err *err) {
    int x = 0, y = 0, comp = 0;
    if (len > INT_MAX)
        return vitd_fail(err, VITD_E_TOO_LARGE, "%s: %zu bytes is more than stb_image reads", image_format_name(f),
                         len);
    if (!stbi_info_from_memory(data, (int)len, &x, &y, &comp)) {
        const char *why = stbi_failure_reason();
        return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: bad header (%s)", image_format_name(f), why ? why : "?");
    }
    if (f == IMAGE_FMT_BMP && y < 0 && y != INT_MIN) y = -y; /* top-down rows; stbi_load flips them */
    if (x <= 0 || y <= 0)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: bad header (size %dx%d)", image_format_name(f), x, y);
    *w = (uint32_t)x;
    *h = (uint32_t)y;
    return VITD_OK;
}

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

/* Bits per pixel from a BMP's core (12-byte) or info (40+) header; 0 if unknown or too short. */
static uint32_t bmp_bpp(const uint8_t *d, size_t len) {
    if (len < 30) return 0;
    uint32_t hsz = img_le32(d + 14);
    return hsz == 12 ? img_le16(d + 24) : hsz >= 40 ? img_le16(d + 28) : 0;
}

/* Bytes an uncompressed BMP needs (offset of the pixels + padded rows); 0 if compressed or unknown. */
static uint64_t bmp_needed(const uint8_t *d, size_t len, uint32_t w, uint32_t h) {
    if (len < 30) return 0;
    uint32_t off = img_le32(d + 10), hsz = img_le32(d + 14);
    if (hsz != 12 && !(hsz >= 40 && len >= 34)) return 0;
    uint32_t bpp = bmp_bpp(d, len), compression = hsz >= 40 ? img_le32(d + 30) : 0;
    if (compression != 0 && compression != 3 && compression != 6) return 0; /* RLE: size unknown in advance */
    uint64_t row = ((uint64_t)bpp * w + 31) / 32 * 4;
    return (uint64_t)off + row * h;
}

/* Bytes a TGA needs: header, id, colour map (only when indexed, as stb_image skips it) and the pixels, walking
 * the run-length packets of compressed files. Returns UINT64_MAX when a packet header lies past the end. */
static uint64_t tga_needed(const uint8_t *d, size_t len, uint32_t w, uint32_t h) {
    int indexed = d[1] == 1, rle = d[2] >= 8;
    uint64_t pb = (d[16] + 7u) / 8, pos = 18 + (uint64_t)d[0];
    if (indexed) pos += img_le16(d + 3) + (uint64_t)img_le16(d + 5) * ((d[7] + 7u) / 8);
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

/* GIF's LZW codes, read LSB first across the data sub-blocks of one image. */
typedef struct {
    const uint8_t *d;
    size_t len, pos;  /* the next byte to take (a sub-block's length byte when left == 0) */
    size_t left;      /* bytes left in the current sub-block */
    uint32_t acc;
    int bits;
    int ended;        /* the empty sub-block (or the end of the file) was reached */
} gif_bits;

/* The next code of `size` bits, or -1 once the sub-blocks or the file end. */
static int gif_code(gif_bits *b, int size) {
    while (b->bits < size) {
        if (b->ended) return -1;
        if (b->left == 0) {
            if (b->pos >= b->len || b->d[b->pos] == 0) {
                b->ended = 1;
                if (b->pos < b->len) b->pos++;
                return -1;
            }
            b->left = b->d[b->pos++];
        }
        if (b->pos >= b->len) {
            b->ended = 1;
            return -1;
        }
        b->acc |= (uint32_t)b->d[b->pos++] << b->bits;
        b->bits += 8;
        b->left--;
    }
    int code = (int)(b->acc & ((1u << size) - 1));
    b->acc >>= size;
    b->bits -= size;
    return code;
}

/* How many pixels the LZW data at d[pos] (minimum code size byte, then sub-blocks) expands to, counting string
 * lengths without building the strings; stops once `want` are there. Returns -1 for a code that cannot occur. */
static int64_t gif_lzw_pixels(const uint8_t *d, size_t len, size_t pos, int64_t want) {
    if (pos >= len) return 0;
    int min_size = d[pos];
    if (min_size < 1 || min_size > 11) return -1;
    gif_bits b = {.d = d, .len = len, .pos = pos + 1};
    uint16_t slen[4096];
    int clear = 1 << min_size, size = min_size + 1, next = clear + 2, prev = -1;
    for (int i = 0; i < clear; i++) slen[i] = 1;
    int64_t pixels = 0;
    while (pixels < want) {
        int code = gif_code(&b, size);
        if (code < 0 || code == clear + 1) break; /* end of data, or the end code */
        if (code == clear) {
            size = min_size + 1;
            next = clear + 2;
            prev = -1;
            continue;
        }
        int n;
        if (prev < 0) {
            if (code > clear) return -1;
            n = 1;
        } else {
            if (code > next) return -1;
            n = code < next ? slen[code] : slen[prev] + 1;
            if (next < 4096) {
                slen[next] = (uint16_t)(slen[prev] + 1 > 4096 ? 4096 : slen[prev] + 1);
                next++;
                if (next == (1 << size) && size < 12) size++;
            }
        }
        pixels += n;
        prev = code;
    }
    return pixels;
}

/* Whether the first image of a GIF is complete, as Pillow decides it: its LZW data must expand to every pixel of
 * the image's rectangle (Pillow: "image file is truncated" otherwise), within sub-blocks that are all there.
 * Walks the extension blocks before it. A missing final empty sub-block or trailer is allowed, as in Pillow.
 * *covers: the image's rectangle is the whole logical screen. */
static int gif_first_frame_complete(const uint8_t *d, size_t len, int *covers) {
    size_t pos = 13;
    *covers = 0;
    if (len < 13) return 0;
    if (d[10] & 0x80) pos += (size_t)3 << ((d[10] & 7) + 1);
    for (;;) {
        if (pos >= len) return 0;
        uint8_t b = d[pos++];
        if (b == 0x2C) {
            if (len - pos < 10) return 0;
            int64_t fw = img_le16(d + pos + 4), fh = img_le16(d + pos + 6);
            uint8_t flags = d[pos + 8];
            *covers = img_le16(d + pos) == 0 && img_le16(d + pos + 2) == 0 && fw == img_le16(d + 6) &&
                      fh == img_le16(d + 8);
            pos += 9;
            if (flags & 0x80) pos += (size_t)3 << ((flags & 7) + 1);
            return gif_lzw_pixels(d, len, pos, fw * fh) >= fw * fh;
        }
        if (b != 0x21) return 0; /* trailer or garbage before the first image */
        pos++;                   /* label */
        for (;;) {               /* data sub-blocks up to the empty one */
            if (pos >= len) return 0;
            uint8_t n = d[pos++];
            if (n == 0) break;
            pos += n;
        }
    }
}

/* Variants whose pixels stb_image would give differently from Pillow's convert("RGB") (found by a review):
 * refused with the reason, VITD_E_UNSUPPORTED (415), never decoded differently. */
static vitd_status stb_refuse_variant(image_format f, const uint8_t *d, size_t len, vitd_err *err) {
    if (f == IMAGE_FMT_PSD && len >= 26 && img_be16(d + 12) != 3)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "psd: %u channels are not supported (3-channel RGB only: "
                         "stb_image un-premultiplies a fourth channel as alpha, Pillow ignores it)", img_be16(d + 12));
    if (f == IMAGE_FMT_BMP && bmp_bpp(d, len) == 16)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "bmp: 16-bit pixels are not supported (stb_image widens 5-bit "
                         "channels by bit replication, Pillow by scaling: values differ by one)");
    if (f == IMAGE_FMT_TGA && len >= 18) {
        if (d[17] & 0x10)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "tga: right-to-left pixel order is not supported "
                             "(stb_image ignores it, Pillow mirrors the image)");
        if (d[1] == 1 && img_le16(d + 3) != 0)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "tga: a colour map starting at entry %u is not supported "
                             "(stb_image and Pillow read it differently)", img_le16(d + 3));
    }
    return VITD_OK;
}

/* Decodes through stb_image into 3-channel RGB (stb replicates gray and drops alpha, as Pillow does). */
vitd_status stb_decode(image_format f, const uint8_t *data, size_t len, uint32_t w, uint32_t h,
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
    if (f == IMAGE_FMT_PSD && len >= 26 && img_be16(data + 22) != 8) /* Pillow reads 8-bit RGB PSD only */
        return vitd_fail(err, VITD_E_UNSUPPORTED, "psd: %u-bit samples are not supported (8-bit only)",
                         img_be16(data + 22));
    vitd_status st = stb_refuse_variant(f, data, len, err);
    if (st != VITD_OK) return st;
    if (f == IMAGE_FMT_BMP) need = bmp_needed(data, len, w, h);
    if (f == IMAGE_FMT_TGA) need = tga_needed(data, len, w, h);
    int covers = 1;
    if (f == IMAGE_FMT_GIF) complete = gif_first_frame_complete(data, len, &covers);
    if (need > len || !complete)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "%s: truncated data (%zu bytes)", name, len);
    if (!covers)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "gif: a first image smaller than the logical screen is not "
                         "supported (Pillow fills the rest with palette entry 0, stb_image with the background)");

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

