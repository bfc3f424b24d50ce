/* jpeg.c — JPEG through libjpeg-turbo with Pillow's settings (JpegDecode.c without draft mode): JDCT_ISLOW, fancy
 * upsampling, block smoothing, libjpeg's own guess of the colour space, out_color_space JCS_RGB for YCbCr/RGB
 * files and JCS_GRAYSCALE (then replicated) for gray ones. The fixtures decode identically with Debian's
 * libjpeg-turbo 2.1.5 and with the 3.1.4 that Pillow 12.3's wheel bundles.
 *
 * A libjpeg warning that means missing or damaged data fails the decode (Pillow fails on truncation and silently
 * accepts corrupt scans; we are stricter). Warnings that touch no pixel are ignored: unknown Adobe transform or
 * JFIF revision, and extraneous bytes just before EOI (all scans are decoded by then). CMYK/YCCK, 12-bit and
 * lossless JPEGs are refused. No EXIF rotation is applied, as none is applied to a PIL.Image.
 *
 * Memory and time (codecs.h). Marker segments are skipped, never saved (no jpeg_save_markers). The whole-image
 * coefficient arrays of a progressive file are libjpeg's only buffers sized by the image, and max_memory_to_use
 * caps them at what the declared size needs (libjpeg-turbo has no backing store, so more fails at once). A
 * progressive file may hold any number of scans, each one a pass over the image: more than JPEG_MAX_SCANS fail.
 *
 * No global state: the error handler longjmps into a context that lives on the caller's stack.
 */
#include "codecs.h"

#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

/* Scans a progressive file may have (encoders write about 10; libjpeg-turbo's tools suggest limits of 500). */
#define JPEG_MAX_SCANS 1000

/* Walks the JPEG marker segments up to the first SOFn and reads its size; stops at SOS or EOI (no frame). */
vitd_status jpeg_probe(const uint8_t *d, size_t len, uint32_t *w, uint32_t *h, vitd_err *err) {
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
        size_t seg = img_be16(d + pos);
        if (seg < 2)
            return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: bad segment length %zu at offset %zu", seg, pos);
        int is_sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (is_sof) {
            if (seg < 8 || len - pos < 8)
                return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated frame header (SOF%d)", m - 0xC0);
            *h = img_be16(d + pos + 3);
            *w = img_be16(d + pos + 5);
            return VITD_OK;
        }
        if (len - pos < seg) return vitd_fail(err, VITD_E_BAD_IMAGE, "jpeg: truncated header (%zu bytes)", len);
        pos += seg;
    }
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
    struct jpeg_progress_mgr progress; /* counts the scans (jpeg_on_progress) */
    int too_many_scans;
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

/* Called by libjpeg as it consumes input: a file with more than JPEG_MAX_SCANS scans stops here. */
static void jpeg_on_progress(j_common_ptr ci) {
    j_decompress_ptr d = (j_decompress_ptr)ci;
    if (d->input_scan_number <= JPEG_MAX_SCANS) return;
    jpeg_ctx *c = (jpeg_ctx *)d; /* cinfo is the first member */
    c->too_many_scans = 1;
    jpeg_err_mgr *e = (jpeg_err_mgr *)ci->err;
    e->code = -1;
    snprintf(e->msg, sizeof e->msg, "more than %d scans", JPEG_MAX_SCANS);
    longjmp(e->jmp, 1);
}

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
    /* whole-image coefficients: 2 bytes x 64 per 8x8 block per component, 3 components at full resolution, MCU
     * padding included (a 4-component file is refused before they are allocated) */
    c->cinfo.mem->max_memory_to_use = (long)((uint64_t)(w + 32) * (h + 32) * 6 + ((uint64_t)16 << 20));
    c->progress.progress_monitor = jpeg_on_progress;
    c->cinfo.progress = &c->progress;
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

vitd_status jpeg_decode(const uint8_t *data, size_t len, uint32_t w, uint32_t h, vitd_image *out,
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

