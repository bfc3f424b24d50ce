/* test_torch_archive.c — torch.save archives (server/handover/torch_archive.h) read back by an independent reader
 * (tests/torch_reader.h: ZIP records, CRC-32, the pickle's opcodes), for every dtype and several shapes; what
 * the writer refuses; and the content ids of hand-over images (content_id.h): SHA-256 on the FIPS 180-2 vectors,
 * derived ids that change with exactly what changes the embeddings, and the uuid rule.
 * (torch.load itself reads these archives in test_handover_http, through tests/handover_check.py.) */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "content_id.h"
#include "safetensors.h"
#include "torch_archive.h"
#include "torch_reader.h"
#include "util.h"

static const char *storage_of(st_dtype d) {
    return d == ST_BF16 ? "BFloat16Storage" : d == ST_F16 ? "HalfStorage" : d == ST_F32 ? "FloatStorage"
                                                                                           : "LongStorage";
}

/* Writes an archive of seeded bytes and reads it back: entries, alignment, pickle, data. */
static void check_round_trip(st_dtype dt, int ndim, const int64_t *shape) {
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    size_t es = st_dtype_size(dt), nbytes = (size_t)numel * es;
    uint8_t *data = xmalloc(nbytes + 1);
    unsigned long long rng = 0x1234 + (unsigned long long)numel;
    for (size_t i = 0; i < nbytes; i++) data[i] = (uint8_t)check_rng_next(&rng);
    uint8_t *ar = NULL;
    size_t len = 0;
    vitd_err err = {0};
    CHECK_OK(torch_archive_of(dt, ndim, shape, data, &ar, &len, &err), &err);
    tr_tensor t;
    bool ok = ar && tr_read(ar, len, &t);
    CHECK_MSG(ok, "%s %d-d numel %lld: %s", st_dtype_name(dt), ndim, (long long)numel, ok ? "" : t.why);
    if (ok) {
        CHECK_EQ_INT(4, t.n_entries);
        CHECK_MSG(!strcmp(t.storage, storage_of(dt)), "storage %s", t.storage);
        CHECK_MSG(!strcmp(t.key, "0") && !strcmp(t.location, "cpu"), "key %s location %s", t.key, t.location);
        CHECK_MSG(!strcmp(t.version, "3\n") && !strcmp(t.byteorder, "little"), "version/byteorder");
        CHECK(t.numel == numel && t.offset == 0 && t.ndim == ndim);
        int64_t stride = 1;
        for (int d = ndim - 1; d >= 0; d--) {
            CHECK_MSG(t.shape[d] == shape[d] && t.stride[d] == stride, "dim %d: shape %lld stride %lld", d,
                      (long long)t.shape[d], (long long)t.stride[d]);
            stride *= shape[d];
        }
        CHECK_MSG(t.data_size == nbytes && !memcmp(t.data, data, nbytes), "data differs (%u bytes)", t.data_size);
        const tr_entry *d0 = tr_find(&t, "archive/data/0");
        CHECK_MSG(d0 && d0->data_off % 64 == 0, "data/0 at offset %zu, not 64-byte aligned", d0 ? d0->data_off : 0);
    }
    free(ar);
    free(data);
}

static void test_archives(void) {
    printf("torch archives\n");
    const st_dtype dts[] = {ST_BF16, ST_F16, ST_F32, ST_I64};
    const int64_t s1[] = {3}, s2[] = {1, 3}, s3[] = {5, 7}, s4[] = {0, 4}, s5[] = {2, 3, 4}, s6[] = {300, 1000};
    const int64_t *shapes[] = {s1, s2, s3, s4, s5, s6};
    const int dims[] = {1, 2, 2, 2, 3, 2};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++) check_round_trip(dts[i], dims[j], shapes[j]);
    /* in place: begin, write, seal */
    torch_archive ta;
    vitd_err err = {0};
    int64_t shape[2] = {70000, 3}; /* a dimension over 2^16: BININT */
    CHECK_OK(torch_archive_begin(&ta, ST_BF16, 2, shape, &err), &err);
    for (size_t i = 0; i < ta.data_len; i++) torch_archive_data(&ta)[i] = (uint8_t)(i * 7);
    torch_archive_seal(&ta);
    tr_tensor t;
    bool ok = tr_read(ta.buf, ta.len, &t);
    CHECK_MSG(ok && t.shape[0] == 70000 && t.data[12345] == (uint8_t)(12345 * 7), "in place: %s", ok ? "" : t.why);
    free(ta.buf);
    /* what it refuses */
    int64_t neg[1] = {-1}, huge[2] = {65536, 65536}, wide[1] = {(int64_t)1 << 31}, one[1] = {1};
    int64_t big[2] = {65536, 16384}, zero_wide[4] = {0, 40000, 40000, 40000};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_U8, 1, one, &err));
    CHECK_STR_CONTAINS(err.msg, "dtype");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_F32, 0, one, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_F32, 5, huge, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_F32, 1, neg, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_BF16, 1, wide, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_BF16, 2, huge, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, torch_archive_begin(&ta, ST_BF16, 4, zero_wide, &err)); /* strides overflow */
    CHECK_EQ_INT(VITD_E_TOO_LARGE, torch_archive_begin(&ta, ST_F32, 2, big, &err));       /* 4 GiB of data */
    CHECK_STR_CONTAINS(err.msg, "ZIP64");
    CHECK(ta.buf == NULL);
    /* a corrupted byte is caught by the reader (so the reader's checks are live) */
    uint8_t *ar = NULL;
    size_t len = 0;
    CHECK_OK(torch_archive_of(ST_F32, 1, s1, "abcdefghijkl", &ar, &len, &err), &err);
    ar[len / 2] ^= 1;
    CHECK_MSG(!tr_read(ar, len, &t), "a flipped bit went unnoticed");
    free(ar);
}

static void hex(const uint8_t *h, char *out) {
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", h[i]);
}

static void test_sha256(void) {
    printf("SHA-256 (FIPS 180-2 vectors)\n");
    static const struct {
        const char *msg, *digest;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t h[32];
        char got[65];
        content_id_sha256(v[i].msg, strlen(v[i].msg), h);
        hex(h, got);
        CHECK_MSG(!strcmp(got, v[i].digest), "sha256(\"%s\") = %s", v[i].msg, got);
    }
}

static void test_content_ids(void) {
    printf("content ids and uuids\n");
    uint8_t fp[32], fp2[32];
    content_id_sha256("model A", 7, fp);
    content_id_sha256("model B", 7, fp2);
    const uint8_t img[] = "\x89PNG\r\n\x1a\n pretend image bytes", img2[] = "\x89PNG\r\n\x1a\n pretend image bytez";
    char a[65], b[65];
    content_id_image(fp, 65536, 16777216, img, sizeof img, a);
    content_id_image(fp, 65536, 16777216, img, sizeof img, b);
    CHECK_MSG(strlen(a) == 64 && strspn(a, "0123456789abcdef") == 64 && !strcmp(a, b), "id %s / %s", a, b);
    struct {
        const uint8_t *fp;
        size_t lo, hi;
        const uint8_t *img;
        const char *what;
    } other[] = {{fp2, 65536, 16777216, img, "model"}, {fp, 65537, 16777216, img, "min_pixels"},
                 {fp, 65536, 1000000, img, "max_pixels"}, {fp, 65536, 16777216, img2, "image bytes"}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        content_id_image(other[i].fp, other[i].lo, other[i].hi, other[i].img, sizeof img, b);
        CHECK_MSG(strcmp(a, b) != 0, "another %s gives the same id", other[i].what);
    }
    const char *good[] = {"u1", "0201528cf211a1fe223c41b36405f2a74a652c950220336fba7b333f274a9538", "a.b_c:d+e=f-g",
                          "X"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK_MSG(content_id_uuid_ok(good[i], strlen(good[i]), NULL), "%s refused", good[i]);
    char long_id[CONTENT_ID_UUID_MAX + 2];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    const char *bad[] = {"", ".hidden", "..", "a/b", "a\\b", "a b", "caf\xc3\xa9", "x\ny", long_id};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_err err = {0};
        CHECK_MSG(!content_id_uuid_ok(bad[i], strlen(bad[i]), &err) && strstr(err.msg, "uuid"),
                  "uuid \"%s\" accepted", bad[i]);
    }
}

int main(void) {
    test_archives();
    test_sha256();
    test_content_ids();
    return check_done("test_torch_archive");
}
