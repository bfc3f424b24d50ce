/* labels: unit */
/* test_log.c — the log sink: line shape (timestamp, level, message, key=value), text quoting and escaping, JSON
 * lines that parse back to the exact strings (invalid UTF-8 replaced), thresholds, request ids (explicit, per
 * thread, and on library lines through log_install), the access line, truncation of over-long lines, and many
 * threads logging into one file without a single interleaved line. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "check.h"
#include "log.h"

/* ---- capture: log into a temp file, read back what was written since the last call ---- */

static int g_fd = -1;
static off_t g_read_pos;
static char g_path[] = "/tmp/vitd_test_log_XXXXXX";

static void capture_start(vitd_log_level level, log_format format) {
    if (g_fd < 0) {
        g_fd = mkstemp(g_path);
        if (g_fd < 0) { perror("mkstemp"); exit(1); }
        unlink(g_path);
    }
    log_setup(level, format, g_fd);
}

/* Everything written since the previous call; malloc'd. */
static char *captured(void) {
    off_t end = lseek(g_fd, 0, SEEK_END);
    size_t n = (size_t)(end - g_read_pos);
    char *buf = malloc(n + 1);
    ssize_t got = pread(g_fd, buf, n, g_read_pos);
    buf[got > 0 ? got : 0] = '\0';
    g_read_pos = end;
    return buf;
}

/* The part of a text line after "ts level " (checks the timestamp shape on the way). */
static const char *after_ts(const char *line) {
    int y, mo, d, h, mi, s, ms;
    char z;
    int ok = sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h, &mi, &s, &ms, &z) == 8 && z == 'Z' &&
             line[4] == '-' && line[10] == 'T' && line[19] == '.' && line[24] == ' ';
    CHECK_MSG(ok, "bad timestamp in: %.80s", line);
    if (!ok) return line;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
    double diff = difftime(timegm(&tm), time(NULL));
    CHECK_MSG(diff > -600 && diff < 600, "timestamp %.24s is %.0f s off the clock", line, diff);
    return line + 25;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_text(void) {
    capture_start(VITD_LOG_INFO, LOG_TEXT);
    log_line l;
    log_begin(&l, VITD_LOG_INFO, "listening");
    log_str(&l, "host", "127.0.0.1");
    log_int(&l, "port", 8080);
    log_int(&l, "neg", -3);
    log_uint(&l, "big", 18446744073709551615ull);
    log_double(&l, "ratio", 0.25);
    log_bool(&l, "ready", true);
    log_end(&l);
    log_end(&l); /* a second end writes nothing */
    char *out = captured();
    CHECK_EQ_INT(1, count_lines(out));
    const char *rest = after_ts(out);
    CHECK(strcmp(rest, "info listening host=127.0.0.1 port=8080 neg=-3 big=18446744073709551615 ratio=0.25 "
                       "ready=true\n") == 0);
    printf("  %s", out);
    free(out);

    /* quoting and escaping */
    log_begin(&l, VITD_LOG_WARN, "fp8 unavailable: \"no\" kernel");
    log_str(&l, "a", "two words");
    log_str(&l, "b", "say \"hi\"");
    log_str(&l, "c", "line1\nline2\r\t");
    log_str(&l, "d", "back\\slash");
    log_str(&l, "e", "");
    log_str(&l, "f", "k=v");
    log_str(&l, "g", "h\xc3\xa9llo");      /* valid UTF-8 stays bare */
    log_str(&l, "h", "bad\xff\x01");        /* invalid byte and control char escaped */
    log_str(&l, "i", NULL);
    log_end(&l);
    out = captured();
    rest = after_ts(out);
    const char *want = "warn \"fp8 unavailable: \\\"no\\\" kernel\" a=\"two words\" b=\"say \\\"hi\\\"\" "
                       "c=\"line1\\nline2\\r\\t\" d=\"back\\\\slash\" e=\"\" f=\"k=v\" g=h\xc3\xa9llo "
                       "h=\"bad\\xff\\x01\" i=\"\"\n";
    CHECK_MSG(strcmp(rest, want) == 0, "\n got  %s want %s", rest, want);
    CHECK_EQ_INT(1, count_lines(out));
    printf("  %s", out);
    free(out);

    /* threshold */
    log_msg(VITD_LOG_DEBUG, "hidden %d", 1);
    CHECK(!log_enabled(VITD_LOG_DEBUG) && log_enabled(VITD_LOG_ERROR));
    out = captured();
    CHECK_EQ_INT(0, (long long)strlen(out));
    free(out);
    log_set_level(VITD_LOG_DEBUG);
    log_msg(VITD_LOG_DEBUG, "shown %d", 2);
    log_set_level(VITD_LOG_ERROR);
    log_msg(VITD_LOG_WARN, "hidden");
    log_msg(VITD_LOG_ERROR, "boom");
    out = captured();
    CHECK_EQ_INT(2, count_lines(out));
    CHECK_STR_CONTAINS(out, " debug \"shown 2\"\n");
    CHECK_STR_CONTAINS(out, " error boom\n");
    free(out);
}

static void test_parse_helpers(void) {
    vitd_log_level lv;
    log_format f;
    CHECK(log_level_parse("warn", &lv) && lv == VITD_LOG_WARN);
    CHECK(log_level_parse("debug", &lv) && lv == VITD_LOG_DEBUG);
    CHECK(!log_level_parse("verbose", &lv));
    CHECK(log_format_parse("json", &f) && f == LOG_JSON);
    CHECK(!log_format_parse("xml", &f));
    CHECK(strcmp(log_level_name(VITD_LOG_ERROR), "error") == 0);
}

static void test_requests(void) {
    capture_start(VITD_LOG_DEBUG, LOG_TEXT);
    log_install();
    log_req(VITD_LOG_INFO, "r-1", "decoded %d images", 3);
    log_request_begin("r-2");
    CHECK(log_request_current() && strcmp(log_request_current(), "r-2") == 0);
    log_msg(VITD_LOG_INFO, "queued");
    vitd_log(VITD_LOG_WARN, "image %d: odd ICC profile", 0); /* a library line through the hook */
    log_line l;
    log_begin(&l, VITD_LOG_INFO, "batch");
    log_int(&l, "n", 4);
    log_end(&l);
    log_request_end();
    CHECK(log_request_current() == NULL);
    log_msg(VITD_LOG_INFO, "idle");
    char *out = captured();
    CHECK_EQ_INT(5, count_lines(out));
    CHECK_STR_CONTAINS(out, " info \"decoded 3 images\" req=r-1\n");
    CHECK_STR_CONTAINS(out, " info queued req=r-2\n");
    CHECK_STR_CONTAINS(out, " warn \"image 0: odd ICC profile\" req=r-2\n");
    CHECK_STR_CONTAINS(out, " info batch req=r-2 n=4\n");
    CHECK_STR_CONTAINS(out, " info idle\n");
    free(out);
    vitd_log_set(NULL, NULL);

    /* the access line */
    log_access_rec a = {.req_id = "abc", .method = "POST", .route = "/v1/embeddings", .status = 200, .images = 2,
                         .tokens = 512, .bytes_in = 1000, .bytes_out = 2000, .queue_ms = 0.5, .prep_ms = 1.25,
                         .encode_ms = 10, .total_ms = 12.0004};
    log_request_line(&a);
    out = captured();
    const char *rest = after_ts(out);
    const char *want = "info access req=abc method=POST route=/v1/embeddings status=200 images=2 tokens=512 "
                       "bytes_in=1000 bytes_out=2000 queue_ms=0.500 prep_ms=1.250 encode_ms=10.000 "
                       "total_ms=12.000\n";
    CHECK_MSG(strcmp(rest, want) == 0, "\n got  %s want %s", rest, want);
    free(out);
    a.status = 503;
    a.error = "busy";
    a.remote = "10.0.0.7:5512";
    log_request_line(&a);
    out = captured();
    CHECK_STR_CONTAINS(out, " warn access req=abc ");
    CHECK_STR_CONTAINS(out, " status=503 ");
    CHECK_STR_CONTAINS(out, " error=busy remote=10.0.0.7:5512\n");
    free(out);
    /* access_log off: successes dropped, failures kept */
    log_set_access(false);
    a.status = 200;
    log_request_line(&a);
    a.status = 413;
    log_request_line(&a);
    log_set_access(true);
    out = captured();
    CHECK_EQ_INT(1, count_lines(out));
    CHECK_STR_CONTAINS(out, " status=413 ");
    free(out);
}

static void test_json(void) {
    capture_start(VITD_LOG_INFO, LOG_JSON);
    const char *odd = "quote\" back\\ nl\n tab\t ctl\x01 \xc3\xa9 end";
    log_line l;
    log_begin_req(&l, VITD_LOG_ERROR, "id-9", "msg with \"quotes\"\n");
    log_str(&l, "odd", odd);
    log_str(&l, "bad_utf8", "a\xff" "b");
    log_int(&l, "n", -42);
    log_double(&l, "x", 1.5);
    log_double(&l, "nan", 0.0 / 0.0);
    log_bool(&l, "ok", false);
    log_end(&l);
    log_access_rec a = {.req_id = "q", .method = "GET", .route = "/metrics", .status = 200, .total_ms = 0.25};
    log_request_line(&a);
    char *out = captured();
    CHECK_EQ_INT(2, count_lines(out));
    char *nl = strchr(out, '\n');
    *nl = '\0';
    printf("  %s\n", out);
    cJSON *j = cJSON_Parse(out);
    CHECK_MSG(j != NULL, "line is not JSON: %s", out);
    if (j) {
        const cJSON *ts = cJSON_GetObjectItem(j, "ts");
        CHECK(cJSON_IsString(ts) && strlen(ts->valuestring) == 24);
        if (cJSON_IsString(ts)) {
            char line[64];
            snprintf(line, sizeof line, "%s x", ts->valuestring);
            after_ts(line);
        }
        CHECK(strcmp(cJSON_GetObjectItem(j, "level")->valuestring, "error") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(j, "msg")->valuestring, "msg with \"quotes\"\n") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(j, "req")->valuestring, "id-9") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(j, "odd")->valuestring, odd) == 0);
        CHECK(strcmp(cJSON_GetObjectItem(j, "bad_utf8")->valuestring, "a\xef\xbf\xbd" "b") == 0);
        CHECK(cJSON_IsNumber(cJSON_GetObjectItem(j, "n")) && cJSON_GetObjectItem(j, "n")->valuedouble == -42);
        CHECK(cJSON_GetObjectItem(j, "x")->valuedouble == 1.5);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "nan")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(j, "ok")));
    }
    cJSON_Delete(j);
    j = cJSON_Parse(nl + 1);
    CHECK(j != NULL);
    if (j) {
        CHECK(strcmp(cJSON_GetObjectItem(j, "msg")->valuestring, "access") == 0);
        CHECK(cJSON_GetObjectItem(j, "status")->valuedouble == 200);
        CHECK(cJSON_GetObjectItem(j, "total_ms")->valuedouble == 0.25);
        CHECK(strcmp(cJSON_GetObjectItem(j, "route")->valuestring, "/metrics") == 0);
    }
    cJSON_Delete(j);
    free(out);
}

/* Over-long lines are cut at LOG_LINE_MAX and stay one well-formed line in both formats. */
static void test_truncation(void) {
    size_t n = 3 * LOG_LINE_MAX;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    big[100] = ' '; /* forces quoting in text mode */
    for (int fmt = 0; fmt < 2; fmt++) {
        capture_start(VITD_LOG_INFO, (log_format)fmt);
        log_line l;
        log_begin(&l, VITD_LOG_INFO, "big");
        log_str(&l, "first", "ok");
        log_str(&l, "v", big);
        log_int(&l, "after", 1); /* no room left: dropped */
        log_end(&l);
        log_msg(VITD_LOG_INFO, "%s", big);
        char *out = captured();
        CHECK_EQ_INT(2, count_lines(out));
        for (char *line = out, *end; (end = strchr(line, '\n')); line = end + 1) {
            *end = '\0';
            size_t len = (size_t)(end - line) + 1;
            CHECK_MSG(len <= LOG_LINE_MAX && len > LOG_LINE_MAX - 64, "line of %zu bytes", len);
            if (fmt == LOG_JSON) {
                cJSON *j = cJSON_Parse(line);
                CHECK_MSG(j != NULL, "truncated JSON line does not parse");
                cJSON_Delete(j);
            } else {
                CHECK(len > 5 && strcmp(end - 4, "...\"") == 0);
            }
            CHECK(!strstr(line, "after"));
        }
        free(out);
    }
    free(big);
}

/* ---- concurrency: 8 threads x 3000 lines of varied length into one file, no line interleaved ---- */

enum { N_THREADS = 8, N_LINES = 3000 };

static void *writer(void *arg) {
    int t = (int)(long)arg;
    char pad[3001];
    for (int i = 0; i < N_LINES; i++) {
        size_t plen = (size_t)((i * 7919 + t * 104729) % 3000);
        memset(pad, 'a' + t, plen);
        pad[plen] = '\0';
        log_line l;
        log_begin(&l, VITD_LOG_INFO, "stress");
        log_int(&l, "t", t);
        log_int(&l, "i", i);
        log_str(&l, "pad", pad);
        log_int(&l, "end", t * 100000 + i);
        log_end(&l);
    }
    return NULL;
}

static void test_concurrency(log_format fmt) {
    capture_start(VITD_LOG_INFO, fmt);
    pthread_t th[N_THREADS];
    for (long t = 0; t < N_THREADS; t++) pthread_create(&th[t], NULL, writer, (void *)t);
    for (int t = 0; t < N_THREADS; t++) pthread_join(th[t], NULL);
    char *out = captured();
    static unsigned char seen[N_THREADS][N_LINES];
    memset(seen, 0, sizeof seen);
    int lines = 0, bad = 0;
    for (char *line = out, *end; (end = strchr(line, '\n')); line = end + 1) {
        *end = '\0';
        lines++;
        int t = -1, i = -1, e = -1;
        size_t padlen = 0;
        if (fmt == LOG_TEXT) {
            const char *p = strstr(line, " t=");
            const char *q = strstr(line, " pad=");
            const char *r = strstr(line, " end=");
            if (p && q && r && sscanf(p, " t=%d i=%d", &t, &i) == 2 && sscanf(r, " end=%d", &e) == 1)
                padlen = q[5] == '"' ? (size_t)(r - (q + 7)) : (size_t)(r - (q + 5)); /* "" when empty */
        } else {
            cJSON *j = cJSON_Parse(line);
            if (j) {
                t = (int)cJSON_GetObjectItem(j, "t")->valuedouble;
                i = (int)cJSON_GetObjectItem(j, "i")->valuedouble;
                e = (int)cJSON_GetObjectItem(j, "end")->valuedouble;
                padlen = strlen(cJSON_GetObjectItem(j, "pad")->valuestring);
                cJSON_Delete(j);
            }
        }
        size_t want_pad = (t >= 0 && i >= 0) ? (size_t)((i * 7919 + t * 104729) % 3000) : (size_t)-1;
        bool ok = t >= 0 && t < N_THREADS && i >= 0 && i < N_LINES && e == t * 100000 + i && padlen == want_pad &&
                  !seen[t][i];
        if (ok) seen[t][i] = 1;
        else if (bad++ < 3) fprintf(stderr, "bad line: %.120s\n", line);
    }
    CHECK_EQ_INT(N_THREADS * N_LINES, lines);
    CHECK_EQ_INT(0, bad);
    printf("  %s: %d lines from %d threads, %d malformed\n", fmt == LOG_JSON ? "json" : "text", lines, N_THREADS,
           bad);
    free(out);
}

int main(void) {
    test_parse_helpers();
    test_text();
    test_requests();
    test_json();
    test_truncation();
    test_concurrency(LOG_TEXT);
    test_concurrency(LOG_JSON);
    log_setup(VITD_LOG_INFO, LOG_TEXT, -1);
    close(g_fd);
    return check_done("test_log");
}
