/* labels: unit */
/* test_image.c — image decoding against Pillow: every fixture in tests/fixtures/images that has a <name>.ref.png
 * (Pillow's Image.open(p).convert("RGB"), written by tests/fixtures/make_images.py; pal8_short_plte follows
 * Pillow 12.3 where 9.4 differs) must decode bit for bit to it; probe() must give the size; broken, refused
 * and oversized files must fail with the right status and a message that says why; truncation at 200 cut
 * points never crashes and never succeeds short of the full file (PNG, JPEG), or succeeds only with the full
 * image (stb_image formats); random byte flips never crash; decoding is thread-safe. */
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>

#include "check.h"
#include "image.h"

#define FIXDIR VITD_SOURCE_DIR "/tests/fixtures/images/"
#define SKIMAGE_DIR "/usr/lib/python3/dist-packages/skimage/data/"

typedef struct {
    const char *name;
    image_format fmt;
    uint32_t w, h;
} fixture;

static const fixture FIXTURES[] = {
    {"chelsea.png", IMAGE_FMT_PNG, 451, 300},
    {"rocket.jpg", IMAGE_FMT_JPEG, 640, 427},
    {"photo_q90_420.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_q80_422.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_q95_444.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_progressive.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_optimized.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_gray.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_gray_progressive.jpg", IMAGE_FMT_JPEG, 203, 141},
    {"photo_exif_rot6.jpg", IMAGE_FMT_JPEG, 203, 141}, /* EXIF orientation 6 is not applied */
    {"jpeg_1x1.jpg", IMAGE_FMT_JPEG, 1, 1},
    {"jpeg_3x2.jpg", IMAGE_FMT_JPEG, 3, 2},
    {"jpeg_4x600.jpg", IMAGE_FMT_JPEG, 4, 600},
    {"jpeg_600x3.jpg", IMAGE_FMT_JPEG, 600, 3},
    {"gray1.png", IMAGE_FMT_PNG, 61, 47},
    {"gray2.png", IMAGE_FMT_PNG, 61, 47},
    {"gray4.png", IMAGE_FMT_PNG, 61, 47},
    {"gray8.png", IMAGE_FMT_PNG, 61, 47},
    {"gray16.png", IMAGE_FMT_PNG, 61, 47},
    {"gray2_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"gray8_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"gray16_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb8.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb16.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb8_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb16_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"ga8.png", IMAGE_FMT_PNG, 61, 47},
    {"ga16.png", IMAGE_FMT_PNG, 61, 47},
    {"rgba8.png", IMAGE_FMT_PNG, 61, 47},
    {"rgba16.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb8_multi_idat.png", IMAGE_FMT_PNG, 61, 47},
    {"pal1.png", IMAGE_FMT_PNG, 61, 47},
    {"pal2.png", IMAGE_FMT_PNG, 61, 47},
    {"pal4.png", IMAGE_FMT_PNG, 61, 47},
    {"pal8.png", IMAGE_FMT_PNG, 61, 47},
    {"pal4_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"pal8_trns.png", IMAGE_FMT_PNG, 61, 47},
    {"pal8_short_plte.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb8_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"gray16_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"gray1_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"pal4_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"ga16_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"rgba8_interlaced.png", IMAGE_FMT_PNG, 61, 47},
    {"rgb8_1x1.png", IMAGE_FMT_PNG, 1, 1},
    {"rgb8_3x2.png", IMAGE_FMT_PNG, 3, 2},
    {"rgb8_3x2_interlaced.png", IMAGE_FMT_PNG, 3, 2},
    {"gray16_1x1.png", IMAGE_FMT_PNG, 1, 1},
    {"rgb8_4x600.png", IMAGE_FMT_PNG, 4, 600},
    {"gray8_600x3.png", IMAGE_FMT_PNG, 600, 3},
    {"photo_crop.png", IMAGE_FMT_PNG, 160, 120},
    {"bmp24.bmp", IMAGE_FMT_BMP, 75, 53},
    {"bmp8.bmp", IMAGE_FMT_BMP, 75, 53},
    {"gif.gif", IMAGE_FMT_GIF, 75, 53},
    {"tga.tga", IMAGE_FMT_TGA, 75, 53},
    {"tga_rle.tga", IMAGE_FMT_TGA, 75, 53},
    {"ppm.ppm", IMAGE_FMT_PNM, 75, 53},
    {"pgm.pgm", IMAGE_FMT_PNM, 75, 53},
    {"bmp_topdown.bmp", IMAGE_FMT_BMP, 75, 53},
    {"psd8.psd", IMAGE_FMT_PSD, 75, 53},
    {"gif_lzw_full.gif", IMAGE_FMT_GIF, 20, 12},
};
#define N_FIXTURES (sizeof FIXTURES / sizeof FIXTURES[0])

/* Reads a fixture; NULL (and a failed check) if it is missing. */
static uint8_t *load(const char *name, size_t *len) {
    char path[512];
    snprintf(path, sizeof path, "%s%s", FIXDIR, name);
    uint8_t *d = check_read_file(path, len);
    CHECK_MSG(d != NULL, "cannot read %s", path);
    return d;
}

/* Compares two RGB images; prints the number of differing pixels, max abs difference, first difference. */
static int same_pixels(const char *what, const vitd_image *got, const vitd_image *ref) {
    if (got->width != ref->width || got->height != ref->height) {
        printf("  %-28s size %ux%u, reference %ux%u\n", what, got->width, got->height, ref->width, ref->height);
        return 0;
    }
    size_t n = (size_t)got->width * got->height, bad = 0, first = (size_t)-1;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int diff = 0;
        for (int c = 0; c < 3; c++) {
            int d = abs((int)got->rgb[3 * i + c] - (int)ref->rgb[3 * i + c]);
            if (d > diff) diff = d;
        }
        if (diff) {
            bad++;
            if (first == (size_t)-1) first = i;
            if (diff > maxd) maxd = diff;
        }
    }
    if (bad) {
        size_t fx = first % got->width, fy = first / got->width;
        printf("  %-28s %zu of %zu pixels differ, max abs %d, first at (%zu,%zu): got %d,%d,%d want %d,%d,%d\n",
               what, bad, n, maxd, fx, fy, got->rgb[3 * first], got->rgb[3 * first + 1], got->rgb[3 * first + 2],
               ref->rgb[3 * first], ref->rgb[3 * first + 1], ref->rgb[3 * first + 2]);
    }
    return bad == 0;
}

/* Number of distinct RGB values, capped at 3: the fixtures must not be constant. */
static int distinct_values(const vitd_image *im) {
    size_t n = (size_t)im->width * im->height;
    int k = 1;
    const uint8_t *a = im->rgb, *b = NULL;
    for (size_t i = 1; i < n && k < 3; i++) {
        const uint8_t *p = im->rgb + 3 * i;
        if (memcmp(p, a, 3) != 0 && (!b || memcmp(p, b, 3) != 0)) {
            if (!b) b = p;
            k++;
        }
    }
    return k;
}

static void test_fixtures_match_pillow(void) {
    int matched = 0;
    for (size_t i = 0; i < N_FIXTURES; i++) {
        const fixture *fx = &FIXTURES[i];
        char refname[256];
        size_t len = 0, rlen = 0;
        vitd_err err = {0};
        snprintf(refname, sizeof refname, "%s.ref.png", fx->name);
        uint8_t *data = load(fx->name, &len), *rdata = load(refname, &rlen);
        if (!data || !rdata) { free(data); free(rdata); continue; }

        image_format f;
        uint32_t w = 0, h = 0;
        CHECK_OK(image_probe(data, len, &f, &w, &h, &err), &err);
        CHECK_MSG(f == fx->fmt && w == fx->w && h == fx->h, "%s: probe says %s %ux%u, expected %s %ux%u", fx->name,
                  image_format_name(f), w, h, image_format_name(fx->fmt), fx->w, fx->h);
        CHECK_EQ_INT(fx->fmt, image_sniff(data, len));

        vitd_image got, ref;
        vitd_status s1 = image_decode(data, len, 0, &got, &err);
        CHECK_MSG(s1 == VITD_OK, "%s: %s", fx->name, err.msg);
        vitd_status s2 = image_decode(rdata, rlen, 0, &ref, &err);
        CHECK_MSG(s2 == VITD_OK, "%s: %s", refname, err.msg);
        if (s1 == VITD_OK && s2 == VITD_OK) {
            int ok = same_pixels(fx->name, &got, &ref);
            CHECK_MSG(ok, "%s differs from Pillow's decode", fx->name);
            matched += ok;
            if ((size_t)got.width * got.height >= 4)
                CHECK_MSG(distinct_values(&got) >= 2, "%s decodes to a constant image", fx->name);
        }
        image_release(&got);
        image_release(&ref);
        free(data);
        free(rdata);
    }
    printf("  %d of %zu fixtures bit-exact with Pillow\n", matched, N_FIXTURES);
}

/* Every .ref.png in the folder belongs to a fixture of the table (a new fixture without a test fails). */
static void test_every_reference_is_listed(void) {
    DIR *dir = opendir(FIXDIR);
    CHECK_MSG(dir != NULL, "cannot list %s", FIXDIR);
    if (!dir) return;
    struct dirent *e;
    int refs = 0;
    while ((e = readdir(dir))) {
        size_t n = strlen(e->d_name);
        if (n < 9 || strcmp(e->d_name + n - 8, ".ref.png") != 0) continue;
        refs++;
        int found = 0;
        for (size_t i = 0; i < N_FIXTURES; i++)
            if (strlen(FIXTURES[i].name) == n - 8 && strncmp(FIXTURES[i].name, e->d_name, n - 8) == 0) found = 1;
        CHECK_MSG(found, "%s has no entry in FIXTURES", e->d_name);
    }
    closedir(dir);
    CHECK_EQ_INT(N_FIXTURES, refs);
}

/* Pillow's semantics that a wrong-but-consistent reference could hide: 16-bit gray saturates (mostly 255, some
 * below), 1-bit gray is 0/255, alpha never darkens RGB. */
static void test_mode_semantics(void) {
    size_t len;
    vitd_err err;
    vitd_image im;
    uint8_t *d = load("gray16.png", &len);
    if (d && image_decode(d, len, 0, &im, &err) == VITD_OK) {
        size_t n = (size_t)im.width * im.height, sat = 0, low = 0;
        for (size_t i = 0; i < n; i++) {
            sat += im.rgb[3 * i] == 255;
            low += im.rgb[3 * i] < 255;
        }
        printf("  gray16.png: %zu of %zu pixels saturated at 255, %zu below\n", sat, n, low);
        CHECK(sat > n / 2);
        CHECK(low > n / 20);
        image_release(&im);
    }
    free(d);
    d = load("gray16_1x1.png", &len); /* the sample is 200: kept as is, not scaled to 0 */
    if (d && image_decode(d, len, 0, &im, &err) == VITD_OK) {
        CHECK_EQ_INT(200, im.rgb[0]);
        CHECK_EQ_INT(200, im.rgb[2]);
        image_release(&im);
    }
    free(d);
    d = load("gray1.png", &len);
    if (d && image_decode(d, len, 0, &im, &err) == VITD_OK) {
        size_t n = (size_t)im.width * im.height, other = 0, white = 0;
        for (size_t i = 0; i < 3 * n; i++) {
            other += im.rgb[i] != 0 && im.rgb[i] != 255;
            white += im.rgb[i] == 255;
        }
        CHECK_EQ_INT(0, other);
        CHECK(white > 0 && white < 3 * n);
        image_release(&im);
    }
    free(d);
}

typedef struct {
    const char *name;
    vitd_status status;
    const char *msg; /* substring the message must contain */
} bad_file;

static void test_bad_files(void) {
    static const bad_file BAD[] = {
        {"truncated.png", VITD_E_BAD_IMAGE, "png: truncated data"},
        {"truncated.jpg", VITD_E_BAD_IMAGE, "jpeg: truncated data (Premature end of JPEG file)"},
        {"corrupt_crc.png", VITD_E_BAD_IMAGE, "png: IDAT: CRC error"},
        {"corrupt_idat.png", VITD_E_BAD_IMAGE, "png: "},
        {"corrupt_scan.jpg", VITD_E_BAD_IMAGE, "Corrupt JPEG data"},
        {"cmyk.jpg", VITD_E_UNSUPPORTED, "CMYK"},
        {"bomb.png", VITD_E_TOO_LARGE, "100000x100000"},
        {"refused.tif", VITD_E_UNSUPPORTED, "tiff: format not supported"},
        {"refused.webp", VITD_E_UNSUPPORTED, "webp: format not supported"},
        {"refused.hdr", VITD_E_UNSUPPORTED, "Radiance HDR"},
        {"not_an_image.txt", VITD_E_BAD_IMAGE, "unrecognised image format"},
        {"psd16.psd", VITD_E_UNSUPPORTED, "psd: 16-bit samples are not supported"},
        {"gif_lzw_short.gif", VITD_E_BAD_IMAGE, "gif: truncated data"},
        {"gif_lzw_short_noend.gif", VITD_E_BAD_IMAGE, "gif: truncated data"},
        /* stb_image's pixels would differ from Pillow's (make_images.py says how) */
        {"psd_rgba.psd", VITD_E_UNSUPPORTED, "psd: 4 channels are not supported"},
        {"gif_small_frame.gif", VITD_E_UNSUPPORTED, "smaller than the logical screen"},
        {"bmp16.bmp", VITD_E_UNSUPPORTED, "bmp: 16-bit pixels are not supported"},
        {"tga_rtl.tga", VITD_E_UNSUPPORTED, "right-to-left"},
        {"tga_cmap_start.tga", VITD_E_UNSUPPORTED, "colour map starting at entry 1"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        size_t len;
        uint8_t *d = load(BAD[i].name, &len);
        if (!d) continue;
        vitd_image im = {1, 1, (uint8_t *)&im}; /* must come back zeroed */
        vitd_err err = {0};
        vitd_status s = image_decode(d, len, 16777216, &im, &err);
        printf("  %-20s -> %s: %s\n", BAD[i].name, vitd_status_name(s), err.msg);
        CHECK_MSG(s == BAD[i].status, "%s: expected %s, got %s (%s)", BAD[i].name, vitd_status_name(BAD[i].status),
                  vitd_status_name(s), err.msg);
        CHECK_EQ_INT(s, err.code);
        CHECK_STR_CONTAINS(err.msg, BAD[i].msg);
        CHECK(im.rgb == NULL && im.width == 0 && im.height == 0);
        free(d);
    }
}

static void test_limits(void) {
    size_t len;
    vitd_err err = {0};
    vitd_image im;
    image_format f;
    uint32_t w, h;
    /* the bomb: the header says 10^10 pixels, the file is tiny; refused from the header (were it decoded, its
     * short IDAT would give BAD_IMAGE, not TOO_LARGE), with and without a configured limit */
    uint8_t *d = load("bomb.png", &len);
    if (d) {
        CHECK_OK(image_probe(d, len, &f, &w, &h, &err), &err);
        CHECK(f == IMAGE_FMT_PNG && w == 100000 && h == 100000);
        CHECK_EQ_INT(VITD_E_TOO_LARGE, image_decode(d, len, 16777216, &im, &err));
        CHECK_STR_CONTAINS(err.msg, "max_pixels 16777216");
        CHECK_EQ_INT(VITD_E_TOO_LARGE, image_decode(d, len, 0, &im, &err));
        CHECK_STR_CONTAINS(err.msg, "absolute limit");
        CHECK(len < 4096);
    }
    free(d);
    /* a real photo one pixel over / exactly at max_pixels */
    d = load("chelsea.png", &len);
    if (d) {
        CHECK_EQ_INT(VITD_E_TOO_LARGE, image_decode(d, len, 451 * 300 - 1, &im, &err));
        CHECK_STR_CONTAINS(err.msg, "451x300");
        CHECK_STR_CONTAINS(err.msg, "max_pixels 135299");
        CHECK_OK(image_decode(d, len, 451 * 300, &im, &err), &err);
        image_release(&im);
    }
    free(d);
    d = load("rocket.jpg", &len);
    if (d) {
        CHECK_EQ_INT(VITD_E_TOO_LARGE, image_decode(d, len, 1000, &im, &err));
        CHECK_STR_CONTAINS(err.msg, "jpeg: 640x427");
    }
    free(d);
    d = load("gif.gif", &len);
    if (d) {
        CHECK_EQ_INT(VITD_E_TOO_LARGE, image_decode(d, len, 75 * 53 - 1, &im, &err));
        CHECK_STR_CONTAINS(err.msg, "gif: 75x53");
    }
    free(d);
    /* zero width in an otherwise valid PNG header (CRC fixed up by hand below) */
    uint8_t png0[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                        0, 0, 0, 0, 0, 0, 0, 5, 8, 2, 0, 0, 0};
    uint32_t c = 0xFFFFFFFFu; /* CRC-32 of type + data */
    for (int i = 12; i < 29; i++) {
        c ^= png0[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    c ^= 0xFFFFFFFFu;
    png0[29] = c >> 24; png0[30] = c >> 16; png0[31] = c >> 8; png0[32] = c;
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode(png0, sizeof png0, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "zero width or height");
}

/* Cuts a file at ~200 lengths from 0 to full size. PNG and JPEG: only the full file decodes. stb_image formats:
 * a cut file may decode only if it gives exactly the full image (e.g. a GIF without its trailer byte). */
static void truncation_sweep(const char *name, int strict) {
    size_t len;
    uint8_t *d = load(name, &len);
    if (!d) return;
    vitd_image full, im;
    vitd_err err;
    CHECK_OK(image_decode(d, len, 0, &full, &err), &err);
    size_t step = len / 200 ? len / 200 : 1, fails = 0, ok_cut = 0, cuts = 0;
    for (size_t cut = 0; cut <= len; cut += (cut + step < len || cut == len) ? step : len - cut) {
        /* the cut copy lives in its own allocation, so a read past its end is caught by ASan */
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, d, cut);
        err.msg[0] = 0;
        vitd_status s = image_decode(part, cut, 0, &im, &err);
        cuts++;
        if (cut == len) {
            CHECK_MSG(s == VITD_OK, "%s: the full file fails: %s", name, err.msg);
        } else if (s == VITD_OK) {
            ok_cut++;
            CHECK_MSG(!strict, "%s cut at %zu of %zu bytes decodes", name, cut, len);
            CHECK_MSG(same_pixels(name, &im, &full), "%s cut at %zu of %zu decodes to other pixels", name, cut,
                      len);
        } else {
            fails++;
            CHECK_MSG(s == VITD_E_BAD_IMAGE && err.msg[0], "%s cut at %zu: status %s, message '%s'", name, cut,
                      vitd_status_name(s), err.msg);
        }
        image_release(&im);
        free(part);
        if (cut == len) break;
    }
    printf("  %-24s %zu cuts: %zu refused, %zu decoded identically before the end\n", name, cuts, fails, ok_cut);
    image_release(&full);
    free(d);
}

static void test_truncation(void) {
    truncation_sweep("photo_crop.png", 1);
    truncation_sweep("rgb8_interlaced.png", 1);
    truncation_sweep("pal4_interlaced.png", 1);
    truncation_sweep("photo_q90_420.jpg", 1);
    truncation_sweep("photo_progressive.jpg", 1);
    truncation_sweep("photo_gray.jpg", 1);
    truncation_sweep("bmp24.bmp", 0);
    truncation_sweep("bmp8.bmp", 0);
    truncation_sweep("gif.gif", 0);
    truncation_sweep("gif_lzw_full.gif", 0);
    truncation_sweep("bmp_topdown.bmp", 0);
    truncation_sweep("tga.tga", 0);
    truncation_sweep("tga_rle.tga", 0);
    truncation_sweep("ppm.ppm", 0);
    truncation_sweep("pgm.pgm", 0);
}

/* Flips 1 to 8 random bytes of a file, 300 times (fixed seed): every outcome is allowed except a crash, a
 * failure without a message or a success with a size other than the header's. Run under ASan/UBSan to matter. */
static void mutation_sweep(const char *name, unsigned long long seed) {
    size_t len;
    uint8_t *d = load(name, &len);
    if (!d) return;
    uint8_t *m = malloc(len);
    int ok = 0, refused = 0;
    for (int rep = 0; rep < 300; rep++) {
        memcpy(m, d, len);
        int flips = 1 + (int)(check_rng_next(&seed) % 8);
        for (int k = 0; k < flips; k++)
            m[check_rng_next(&seed) % len] ^= (uint8_t)(1 + check_rng_next(&seed) % 255);
        vitd_image im;
        vitd_err err;
        err.msg[0] = 0;
        image_format f;
        uint32_t w = 0, h = 0;
        vitd_status ps = image_probe(m, len, &f, &w, &h, &err);
        vitd_status s = image_decode(m, len, 1u << 24, &im, &err);
        if (s == VITD_OK) {
            ok++;
            CHECK_MSG(ps == VITD_OK && im.width == w && im.height == h, "%s mutation %d: %ux%u, probe %ux%u", name,
                      rep, im.width, im.height, w, h);
        } else {
            refused++;
            CHECK_MSG(err.msg[0] && im.rgb == NULL, "%s mutation %d: status %d without a message", name, rep, s);
        }
        image_release(&im);
    }
    printf("  %-24s 300 mutations: %d decoded, %d refused\n", name, ok, refused);
    free(m);
    free(d);
}

static void test_mutations(void) {
    mutation_sweep("photo_crop.png", 1);
    mutation_sweep("pal4_interlaced.png", 2);
    mutation_sweep("photo_q90_420.jpg", 3);
    mutation_sweep("photo_progressive.jpg", 4);
    mutation_sweep("bmp8.bmp", 5);
    mutation_sweep("gif.gif", 6);
    mutation_sweep("tga_rle.tga", 7);
    mutation_sweep("ppm.ppm", 8);
}

/* Returns the offset of the first SOFn marker's segment (its length field), or 0. */
static size_t find_sof(const uint8_t *d, size_t len) {
    for (size_t i = 2; i + 4 < len; i++)
        if (d[i] == 0xFF && d[i + 1] >= 0xC0 && d[i + 1] <= 0xC3) return i + 2;
    return 0;
}

/* JPEG corner cases made from real files: junk before EOI is accepted (all pixels are decoded by then, Pillow
 * accepts it too), 12-bit precision and the lossless process are refused as unsupported. */
static void test_jpeg_variants(void) {
    size_t len;
    vitd_err err;
    vitd_image full, im;
    uint8_t *d = load("photo_q90_420.jpg", &len);
    if (!d) return;
    CHECK_OK(image_decode(d, len, 0, &full, &err), &err);
    CHECK(len > 4 && d[len - 2] == 0xFF && d[len - 1] == 0xD9);
    uint8_t *junk = malloc(len + 3);
    memcpy(junk, d, len - 2);
    memcpy(junk + len - 2, "\x12\x34\x56\xFF\xD9", 5);
    CHECK_OK(image_decode(junk, len + 3, 0, &im, &err), &err);
    CHECK(same_pixels("junk before EOI", &im, &full));
    image_release(&im);
    /* the same junk in front of a scan's data is corruption */
    size_t sof = find_sof(d, len);
    CHECK(sof > 0);
    uint8_t *m = malloc(len);
    memcpy(m, d, len);
    m[sof + 2] = 12; /* precision */
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, image_decode(m, len, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "precision 12");
    memcpy(m, d, len);
    m[sof - 1] = 0xC3; /* lossless */
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, image_decode(m, len, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "SOF type 0xc3");
    /* probe reads only the header: the first 400 bytes are enough for the size */
    image_format f;
    uint32_t w, h;
    CHECK_OK(image_probe(d, 400, &f, &w, &h, &err), &err);
    CHECK(w == 203 && h == 141);
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_probe(d, 20, &f, &w, &h, &err));
    CHECK_STR_CONTAINS(err.msg, "jpeg: truncated header");
    free(m);
    free(junk);
    image_release(&full);
    free(d);
}

/* PNM files stb_image would decode differently from Pillow are refused (image.c's opening comment). */
static void test_stb_documented_differences(void) {
    vitd_err err;
    vitd_image im;
    /* 16-bit PNM: stb_image byte-swaps the samples; maxval 100: stb_image does not rescale as Pillow does */
    static const uint8_t pgm16[] = "P5 3 1 65535\n\x12\x34\x00\xC8\xFF\xFF";
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, image_decode(pgm16, sizeof pgm16 - 1, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "pnm: maxval 65535 is not supported");
    static const uint8_t pgm100[] = "P5 2 1 100\n\x32\x64";
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, image_decode(pgm100, sizeof pgm100 - 1, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "maxval 100");
    /* comments in the header, maxval 255: decodes, gray replicated */
    static const uint8_t pgm255[] = "P5\n# a comment\n2 1\n255\n\x32\xC8";
    CHECK_OK(image_decode(pgm255, sizeof pgm255 - 1, 0, &im, &err), &err);
    if (im.rgb) CHECK(im.rgb[0] == 0x32 && im.rgb[2] == 0x32 && im.rgb[3] == 0xC8 && im.rgb[5] == 0xC8);
    image_release(&im);
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode(pgm255, sizeof pgm255 - 2, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "pnm: truncated data");
    static const uint8_t p3[] = "P3 1 1 255\n1 2 3\n";
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, image_decode(p3, sizeof p3 - 1, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "P3");
}

static void test_api_edges(void) {
    vitd_err err;
    vitd_image im;
    image_format f;
    uint32_t w = 7, h = 7;
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode(NULL, 0, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "empty");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_probe((const uint8_t *)"\x89PNG\r\n\x1a\n", 8, &f, &w, &h, &err));
    CHECK(f == IMAGE_FMT_PNG && w == 0 && h == 0);
    CHECK_STR_CONTAINS(err.msg, "png: truncated header");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode((const uint8_t *)"\xFF\xD8", 2, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "jpeg: truncated header");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode((const uint8_t *)"GIF89a", 6, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "gif:");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode((const uint8_t *)"BM", 2, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "bmp:");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, image_decode((const uint8_t *)"ab", 2, 0, &im, &err));
    CHECK_STR_CONTAINS(err.msg, "unrecognised");

    CHECK_EQ_INT(IMAGE_FMT_WEBP, image_sniff((const uint8_t *)"RIFF\0\0\0\0WEBPVP8 ", 16));
    CHECK_EQ_INT(IMAGE_FMT_TIFF, image_sniff((const uint8_t *)"MM\0*", 4));
    CHECK_EQ_INT(IMAGE_FMT_HDR, image_sniff((const uint8_t *)"#?RGBE\n", 7));
    CHECK_EQ_INT(IMAGE_FMT_UNKNOWN, image_sniff(NULL, 0));
    static const char *names[] = {"unknown", "png", "jpeg", "bmp", "gif", "tga", "pnm", "psd", "hdr", "pic",
                                  "webp", "tiff"};
    for (int i = 0; i <= IMAGE_FMT_TIFF; i++) CHECK_STR_CONTAINS(image_format_name((image_format)i), names[i]);
    CHECK_STR_CONTAINS(image_format_name((image_format)99), "unknown");

    uint8_t *data = (uint8_t *)&im;
    size_t len = 5;
    CHECK_EQ_INT(VITD_E_IO, image_read_file(FIXDIR "no_such_file.png", &data, &len, &err));
    CHECK(data == NULL && len == 0);
    CHECK_STR_CONTAINS(err.msg, "no_such_file.png: No such file");
    CHECK_EQ_INT(VITD_E_IO, image_read_file(FIXDIR, &data, &len, &err));
    CHECK_STR_CONTAINS(err.msg, "not a regular file");
    CHECK_OK(image_read_file(FIXDIR "rgb8_3x2.png", &data, &len, &err), &err);
    CHECK(len > 33 && data && data[1] == 'P');
    free(data);

    image_release(NULL);
    im.rgb = NULL;
    image_release(&im);
    image_release(&im);
}

/* The scikit-image originals decode to the same pixels as Pillow's reference of our copies. */
static void test_skimage_originals(void) {
    static const char *photos[] = {"chelsea.png", "rocket.jpg"};
    for (int i = 0; i < 2; i++) {
        char path[512], refname[128];
        snprintf(path, sizeof path, "%s%s", SKIMAGE_DIR, photos[i]);
        size_t len, rlen;
        uint8_t *d = check_read_file(path, &len);
        if (!d) {
            printf("  %s absent: skipped\n", path);
            continue;
        }
        snprintf(refname, sizeof refname, "%s.ref.png", photos[i]);
        uint8_t *r = load(refname, &rlen);
        vitd_image a = {0}, b = {0};
        vitd_err err;
        CHECK_OK(image_decode(d, len, 0, &a, &err), &err);
        if (r) CHECK_OK(image_decode(r, rlen, 0, &b, &err), &err);
        if (a.rgb && b.rgb) CHECK_MSG(same_pixels(path, &a, &b), "%s differs from Pillow's reference", path);
        image_release(&a);
        image_release(&b);
        free(d);
        free(r);
    }
}

/* ---- thread safety: four threads decode different files (every decoder) at once and must agree with the
 * single-threaded results ---- */

static const char *THREAD_FILES[] = {"photo_progressive.jpg", "rgb8_interlaced.png", "gif.gif", "photo_gray.jpg",
                                     "pal4.png", "tga_rle.tga", "truncated.jpg", "corrupt_crc.png"};
#define N_THREAD_FILES 8

typedef struct {
    uint8_t *data[N_THREAD_FILES];
    size_t len[N_THREAD_FILES];
    vitd_image want[N_THREAD_FILES];
    vitd_status want_status[N_THREAD_FILES];
    int offset;
    int mismatches;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 10; rep++) {
        for (int k = 0; k < N_THREAD_FILES; k++) {
            int i = (k + j->offset) % N_THREAD_FILES;
            vitd_image im;
            vitd_err err;
            vitd_status s = image_decode(j->data[i], j->len[i], 0, &im, &err);
            if (s != j->want_status[i] ||
                (s == VITD_OK && memcmp(im.rgb, j->want[i].rgb, (size_t)im.width * im.height * 3) != 0))
                j->mismatches++;
            image_release(&im);
        }
    }
    return NULL;
}

static void test_threads(void) {
    thread_job base;
    memset(&base, 0, sizeof base);
    for (int i = 0; i < N_THREAD_FILES; i++) {
        base.data[i] = load(THREAD_FILES[i], &base.len[i]);
        vitd_err err;
        base.want_status[i] = image_decode(base.data[i], base.len[i], 0, &base.want[i], &err);
    }
    thread_job jobs[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = base;
        jobs[i].offset = 2 * i;
        CHECK(pthread_create(&t[i], NULL, thread_main, &jobs[i]) == 0);
    }
    int mism = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        mism += jobs[i].mismatches;
    }
    printf("  4 threads x 80 decodes: %d mismatches\n", mism);
    CHECK_EQ_INT(0, mism);
    for (int i = 0; i < N_THREAD_FILES; i++) {
        image_release(&base.want[i]);
        free(base.data[i]);
    }
}

int main(void) {
    printf("fixtures vs Pillow:\n");
    test_fixtures_match_pillow();
    test_every_reference_is_listed();
    test_mode_semantics();
    printf("bad files:\n");
    test_bad_files();
    test_limits();
    printf("truncation:\n");
    test_truncation();
    test_mutations();
    test_jpeg_variants();
    test_stb_documented_differences();
    test_api_edges();
    test_skimage_originals();
    test_threads();
    return check_done("test_image");
}
