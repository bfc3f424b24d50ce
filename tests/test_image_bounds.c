/* labels: unit */
/* test_image_bounds.c — the decoders' memory bound (encoder/image/codecs.h): files whose chunk, segment, block
 * or section lengths declare far more than the file holds or the image needs ("declared-length bombs"), one set
 * per format, each decoded in a child process whose peak resident memory (VmHWM after clear_refs, less VmRSS
 * before) must stay under IMAGE_DECODER_BYTES of the header's width and height. Before the bound, the 44-byte PNG
 * below made libpng allocate and clear 2 GiB. Each bomb must also fail (or decode) with the stated status, and
 * the decodable ones (ancillary zlib bombs libpng now skips, a 3000x3000 GIF screen around a 1x1 frame) must
 * still decode. The scan limit of progressive JPEG (jpeg.c) is checked on both sides: 2000 valid scans refused,
 * 600 decoded. */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jpeglib.h>
#include <zlib.h>

#include "check.h"
#include "codecs.h"
#include "image.h"
#include "util.h"

#define ANY_STATUS 1 /* not a vitd_status: any outcome but a crash */

/* ---- building the files ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_be32(buf *b, uint32_t v) {
    uint8_t t[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, t, 4);
}
static void put_be16(buf *b, uint32_t v) {
    uint8_t t[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(b, t, 2);
}
static void put_le16(buf *b, uint32_t v) {
    uint8_t t[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put(b, t, 2);
}
static void put_le32(buf *b, uint32_t v) {
    put_le16(b, v & 0xFFFF);
    put_le16(b, v >> 16);
}

/* A PNG chunk with its CRC. */
static void png_chunk(buf *b, const char *tag, const void *data, uint32_t n) {
    put_be32(b, n);
    put(b, tag, 4);
    put(b, data, n);
    uLong crc = crc32(0, (const Bytef *)tag, 4);
    crc = crc32(crc, data, n);
    put_be32(b, (uint32_t)crc);
}

/* Signature and the IHDR of a w x h 8-bit RGB PNG. */
static void png_head(buf *b, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put(b, sig, 8);
    uint8_t ihdr[13] = {0};
    for (int i = 0; i < 4; i++) {
        ihdr[i] = (uint8_t)(w >> (24 - 8 * i));
        ihdr[4 + i] = (uint8_t)(h >> (24 - 8 * i));
    }
    ihdr[8] = 8;
    ihdr[9] = 2;
    png_chunk(b, "IHDR", ihdr, 13);
}

/* The IDAT and IEND of a w x h RGB image of a gradient. */
static void png_tail(buf *b, uint32_t w, uint32_t h) {
    size_t raw_n = (size_t)h * (1 + 3 * w);
    uint8_t *raw = xcalloc(raw_n, 1);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < 3 * w; x++) raw[y * (1 + 3 * w) + 1 + x] = (uint8_t)(x * 17 + y * 29);
    uLongf zn = compressBound(raw_n);
    uint8_t *z = xmalloc(zn);
    compress2(z, &zn, raw, raw_n, 9);
    png_chunk(b, "IDAT", z, (uint32_t)zn);
    png_chunk(b, "IEND", "", 0);
    free(raw);
    free(z);
}

/* keyword \0 method \0 then zlib of n zero bytes: a small chunk that inflates to n bytes. */
static void png_zlib_bomb_chunk(buf *b, const char *tag, size_t n, int has_lang) {
    uint8_t *zeros = xcalloc(n, 1);
    uLongf zn = compressBound(n);
    uint8_t *z = xmalloc(zn);
    compress2(z, &zn, zeros, n, 9);
    buf c = {0};
    put(&c, "bomb", 5); /* keyword and its NUL */
    if (has_lang) put(&c, "\1\0\0\0", 4); /* iTXt: compressed flag, method, empty language and translation */
    else put8(&c, 0);                    /* compression method */
    put(&c, z, zn);
    png_chunk(b, tag, c.p, (uint32_t)c.n);
    free(c.p);
    free(z);
    free(zeros);
}

/* A JPEG of a w x h gradient, written by libjpeg-turbo with a scan script of n_scans valid progressive scans:
 * DC first then refinements for each component, then for each AC coefficient a first scan at Al=a and
 * refinements down to 0, until n_scans are written (the rest of the coefficients stay zero). */
static uint8_t *jpeg_many_scans(uint32_t w, uint32_t h, int n_scans, size_t *len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long out_n = 0;
    jpeg_mem_dest(&c, &out, &out_n);
    c.image_width = w;
    c.image_height = h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_scan_info *scans = xcalloc((size_t)n_scans, sizeof *scans);
    int k = 0, al = 5;
    for (int comp = 0; comp < 3 && k < n_scans; comp++) { /* DC of each component, non-interleaved */
        scans[k++] = (jpeg_scan_info){1, {comp}, 0, 0, 0, al};
        for (int a = al; a > 0 && k < n_scans; a--) scans[k++] = (jpeg_scan_info){1, {comp}, 0, 0, a, a - 1};
    }
    for (int coef = 1; coef <= 63 && k < n_scans; coef++)
        for (int comp = 0; comp < 3 && k < n_scans; comp++) {
            scans[k++] = (jpeg_scan_info){1, {comp}, coef, coef, 0, al};
            for (int a = al; a > 0 && k < n_scans; a--) scans[k++] = (jpeg_scan_info){1, {comp}, coef, coef, a, a - 1};
        }
    c.scan_info = scans;
    c.num_scans = k;
    jpeg_start_compress(&c, TRUE);
    uint8_t *row = xmalloc((size_t)w * 3);
    while (c.next_scanline < h) {
        for (uint32_t x = 0; x < 3 * w; x++) row[x] = (uint8_t)(x * 5 + c.next_scanline * 3);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    free(scans);
    *len = out_n;
    return out;
}

/* ---- measuring one decode ---- */

/* A field of /proc/self/status in KiB, or -1. */
static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    fclose(f);
    return v;
}

typedef struct {
    int status;
    char msg[256];
    long before_kib, peak_kib;
    double ms;
    uint32_t w, h;
} outcome;

/* Decodes in a child: its own peak, unaffected by the other cases. False when the child crashed. */
static bool decode_in_child(const uint8_t *d, size_t n, outcome *o) {
    int p[2];
    if (pipe(p) != 0) return false;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        outcome r = {0};
        int fd = open("/proc/self/clear_refs", O_WRONLY);
        if (fd >= 0) {
            (void)!write(fd, "5", 1); /* resets VmHWM to the present RSS */
            close(fd);
        }
        r.before_kib = status_kib("VmRSS");
        struct timeval t0, t1;
        gettimeofday(&t0, NULL);
        vitd_image im;
        vitd_err err = {0};
        r.status = image_decode(d, n, 0, &im, &err);
        gettimeofday(&t1, NULL);
        r.peak_kib = status_kib("VmHWM");
        r.ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_usec - t0.tv_usec) * 1e-3;
        r.w = im.width;
        r.h = im.height;
        snprintf(r.msg, sizeof r.msg, "%s", err.msg);
        (void)!write(p[1], &r, sizeof r);
        _exit(0);
    }
    close(p[1]);
    ssize_t got = read(p[0], o, sizeof *o);
    close(p[0]);
    int ws = 0;
    waitpid(pid, &ws, 0);
    return got == (ssize_t)sizeof *o && WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

/* One bomb: decodes it, checks the outcome and that the peak stays under the bound for its declared size. */
static void bomb(const char *name, const uint8_t *d, size_t n, uint32_t decl_w, uint32_t decl_h, int want,
                 const char *want_msg) {
    outcome o;
    bool ok = decode_in_child(d, n, &o);
    CHECK_MSG(ok, "%s: the decoding child crashed", name);
    if (!ok) return;
    uint64_t bound = IMAGE_DECODER_BYTES(decl_w, decl_h);
    uint64_t used = o.peak_kib > o.before_kib ? (uint64_t)(o.peak_kib - o.before_kib) * 1024 : 0;
    printf("  %-26s %7zu bytes, declares %ux%u: %-11s peak +%7.1f MiB (bound %6.0f MiB) %8.1f ms  %s\n", name, n,
           decl_w, decl_h, vitd_status_name(o.status), used / 1048576.0, bound / 1048576.0, o.ms, o.msg);
    CHECK_MSG(o.before_kib > 0 && o.peak_kib > 0, "%s: /proc/self/status has no VmRSS/VmHWM", name);
    CHECK_MSG(used <= bound, "%s: peak %.1f MiB over the bound %.1f MiB", name, used / 1048576.0,
              bound / 1048576.0);
    if (want != ANY_STATUS) {
        CHECK_MSG(o.status == want, "%s: expected %s, got %s (%s)", name, vitd_status_name((vitd_status)want),
                  vitd_status_name(o.status), o.msg);
        if (want_msg) CHECK_STR_CONTAINS(o.msg, want_msg);
    }
    if (o.status == VITD_OK) CHECK_MSG(o.w == decl_w && o.h == decl_h, "%s: decoded %ux%u", name, o.w, o.h);
    else CHECK_MSG(o.msg[0] != 0, "%s: failed without a message", name);
}

/* ---- the bombs, per format ---- */

static void png_bombs(void) {
    buf b = {0};
    /* the 44 bytes: a text chunk declaring 0x7ffffff0 bytes right after IHDR */
    png_head(&b, 4, 4);
    put_be32(&b, 0x7ffffff0u);
    put(&b, "tEXt", 4);
    bomb("png text 2 GiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "png: ");
    b.n = 0;
    png_head(&b, 4, 4);
    put_be32(&b, 0x7ffffff0u);
    put(&b, "quIt", 4); /* an unknown ancillary chunk */
    put(&b, "tail bytes", 10);
    bomb("png unknown chunk 2 GiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "png: ");
    b.n = 0;
    png_head(&b, 4, 4);
    put_be32(&b, 0x7ffffff0u);
    put(&b, "IDAT", 4);
    put(&b, "\x78\x9c\x01\x02", 4);
    bomb("png IDAT 2 GiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "png: ");
    b.n = 0;
    png_head(&b, 4, 4);
    put_be32(&b, 0x7ffffff0u);
    put(&b, "PLTE", 4);
    bomb("png PLTE 2 GiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "png: ");
    /* ancillary zlib bombs: 256 MiB of text, profile and international text in a few hundred KiB; libpng
     * skips them unread, and the image decodes */
    const char *tags[3] = {"zTXt", "iCCP", "iTXt"};
    for (int i = 0; i < 3; i++) {
        b.n = 0;
        png_head(&b, 4, 4);
        png_zlib_bomb_chunk(&b, tags[i], (size_t)256 << 20, i == 2);
        png_tail(&b, 4, 4);
        char name[64];
        snprintf(name, sizeof name, "png %s inflating to 256 MiB", tags[i]);
        bomb(name, b.p, b.n, 4, 4, VITD_OK, NULL);
    }
    /* 20000 small text chunks: libpng would cache each one */
    b.n = 0;
    png_head(&b, 4, 4);
    for (int i = 0; i < 20000; i++) png_chunk(&b, "tEXt", "Comment\0a text chunk of no interest", 35);
    png_tail(&b, 4, 4);
    bomb("png 20000 text chunks", b.p, b.n, 4, 4, VITD_OK, NULL);
    free(b.p);
}

static void jpeg_bombs(void) {
    buf b = {0};
    /* an APP1 segment declaring 65535 bytes with 100 there */
    put(&b, "\xFF\xD8\xFF\xE1\xFF\xFF", 6);
    for (int i = 0; i < 100; i++) put8(&b, (uint8_t)i);
    bomb("jpeg APP1 64 KiB", b.p, b.n, 0, 0, VITD_E_BAD_IMAGE, "jpeg: truncated header");
    free(b.p);
    /* 2000 valid progressive scans of a 16x16 image: refused by the scan limit, not decoded 2000 times */
    size_t n = 0;
    uint8_t *j = jpeg_many_scans(16, 16, 2000, &n);
    bomb("jpeg 2000 scans", j, n, 16, 16, VITD_E_BAD_IMAGE, "more than 1000 scans");
    free(j);
    j = jpeg_many_scans(16, 16, 600, &n);
    bomb("jpeg 600 scans", j, n, 16, 16, VITD_OK, NULL);
    free(j);
    /* the same many-scan file with its frame header saying 4000x4000: the coefficient arrays are sized by the
     * declared size (within the bound), and the data runs out */
    j = jpeg_many_scans(16, 16, 200, &n);
    for (size_t i = 0; i + 9 < n; i++)
        if (j[i] == 0xFF && j[i + 1] == 0xC2) {
            j[i + 5] = 4000 >> 8; j[i + 6] = 4000 & 255; j[i + 7] = 4000 >> 8; j[i + 8] = 4000 & 255;
            break;
        }
    bomb("jpeg progressive 4000x4000", j, n, 4000, 4000, VITD_E_BAD_IMAGE, "jpeg: ");
    free(j);
}

/* A GIF header: logical screen w x h with a 256-entry global colour table. */
static void gif_head(buf *b, uint32_t w, uint32_t h) {
    put(b, "GIF89a", 6);
    put_le16(b, w);
    put_le16(b, h);
    put(b, "\xF7\0\0", 3);
    for (int i = 0; i < 256; i++) put(b, (uint8_t[3]){(uint8_t)i, (uint8_t)(255 - i), (uint8_t)(i / 2)}, 3);
}

static void gif_bombs(void) {
    buf b = {0};
    gif_head(&b, 4, 4);
    put(&b, "\x21\xFE\xFF", 3); /* a comment whose first sub-block declares 255 bytes, then the file ends */
    put(&b, "short", 5);
    bomb("gif comment block", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "gif: truncated");
    /* a 3000x3000 logical screen around one 1x1 frame (index 7): stb_image would size its buffers by the screen;
     * a first image smaller than the screen is refused before any of that (stb_image and Pillow fill the rest
     * differently) */
    b.n = 0;
    gif_head(&b, 3000, 3000);
    put8(&b, 0x2C);
    put_le16(&b, 0); put_le16(&b, 0); put_le16(&b, 1); put_le16(&b, 1);
    put8(&b, 0);
    put(&b, "\x02\x02\x4C\x01\x00\x3B", 6); /* min code size 2; 3-bit codes clear (4), index 1, end (5) */
    bomb("gif 3000x3000 screen", b.p, b.n, 3000, 3000, VITD_E_UNSUPPORTED, "smaller than the logical screen");
    free(b.p);
}

/* A BMP header (BITMAPINFOHEADER) for a w x h image at bpp bits. */
static void bmp_head(buf *b, uint32_t w, uint32_t h, int bpp, uint32_t offset, uint32_t colours) {
    put(b, "BM", 2);
    put_le32(b, 0);
    put_le32(b, 0);
    put_le32(b, offset);
    put_le32(b, 40);
    put_le32(b, w);
    put_le32(b, h);
    put_le16(b, 1);
    put_le16(b, (uint32_t)bpp);
    put_le32(b, 0);
    put_le32(b, 0);
    put_le32(b, 2835);
    put_le32(b, 2835);
    put_le32(b, colours);
    put_le32(b, 0);
}

static void other_bombs(void) {
    buf b = {0};
    bmp_head(&b, 4, 4, 24, 0x7ffffff0u, 0);
    for (int i = 0; i < 48; i++) put8(&b, (uint8_t)i);
    bomb("bmp pixel offset 2 GiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, NULL);
    b.n = 0;
    bmp_head(&b, 4, 4, 8, 54 + 1024, 0x7fffffffu);
    for (int i = 0; i < 64; i++) put8(&b, (uint8_t)i);
    bomb("bmp 2^31 palette colours", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, NULL);
    /* TGA: an indexed image with a colour map of 65535 32-bit entries, the file 60 bytes */
    b.n = 0;
    put(&b, (uint8_t[18]){0, 1, 1, 0, 0, 0xFF, 0xFF, 32, 0, 0, 0, 0, 4, 0, 4, 0, 8, 0}, 18);
    for (int i = 0; i < 42; i++) put8(&b, (uint8_t)i);
    bomb("tga colour map 256 KiB", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "tga: truncated");
    /* PSD: 4x4 RGB whose colour-mode section declares 2 GiB */
    b.n = 0;
    put(&b, "8BPS", 4);
    put_be16(&b, 1);
    put(&b, "\0\0\0\0\0\0", 6);
    put_be16(&b, 3);
    put_be32(&b, 4);
    put_be32(&b, 4);
    put_be16(&b, 8);
    put_be16(&b, 3);
    put_be32(&b, 0x7fffffffu);
    for (int i = 0; i < 64; i++) put8(&b, (uint8_t)i);
    bomb("psd section 2 GiB", b.p, b.n, 4, 4, ANY_STATUS, NULL);
    /* PNM: 4x4 with three bytes of pixels */
    b.n = 0;
    put(&b, "P6 4 4 255\n\1\2\3", 14);
    bomb("ppm short pixels", b.p, b.n, 4, 4, VITD_E_BAD_IMAGE, "pnm: truncated");
    free(b.p);
}

int main(void) {
    if (status_kib("VmHWM") < 0) SKIP("no /proc/self/status VmHWM to measure peaks with");
    printf("declared-length bombs (peak resident memory of a child decoding each one):\n");
    png_bombs();
    jpeg_bombs();
    gif_bombs();
    other_bombs();
    return check_done("test_image_bounds");
}
