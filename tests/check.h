/* check.h — tiny test harness: asserts that print expected and got, comparison metrics (max abs, max rel, cosine,
 * relative L2), and the skip convention (exit 77 = ctest Skipped). Header-only; include once per test program. */
#ifndef VITD_CHECK_H
#define VITD_CHECK_H

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int check_failures;
static int check_count;

#define CHECK(cond) \
    do { ++check_count; if (!(cond)) { ++check_failures; \
        fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_MSG(cond, ...) \
    do { ++check_count; if (!(cond)) { ++check_failures; \
        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); \
        fputc('\n', stderr); } } while (0)
#define CHECK_EQ_INT(expected, got) \
    do { long long e_ = (long long)(expected), g_ = (long long)(got); ++check_count; if (e_ != g_) { \
        ++check_failures; fprintf(stderr, "FAIL %s:%d: %s: expected %lld, got %lld\n", __FILE__, __LINE__, \
        #got, e_, g_); } } while (0)
#define CHECK_STR_CONTAINS(hay, needle) \
    do { const char *h_ = (hay), *n_ = (needle); ++check_count; if (!h_ || !strstr(h_, n_)) { \
        ++check_failures; fprintf(stderr, "FAIL %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
        h_ ? h_ : "(null)", n_); } } while (0)
/* A status call that must succeed; prints err.msg when it does not. */
#define CHECK_OK(call, errp) \
    do { int s_ = (call); ++check_count; if (s_ != 0) { ++check_failures; \
        fprintf(stderr, "FAIL %s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, s_, (errp)->msg); } \
    } while (0)

/* Skip the whole program: ctest reports it as Skipped (SKIP_RETURN_CODE 77). */
#define SKIP(...) do { printf("SKIP: "); printf(__VA_ARGS__); printf("\n"); exit(77); } while (0)

/* Ends main(): prints a summary and returns the exit code. */
static inline int check_done(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    if (check_count == 0) { fprintf(stderr, "%s: no checks ran\n", name); return 1; }
    return check_failures ? 1 : 0;
}

typedef struct {
    double max_abs, max_rel, cosine, rel_l2;
    size_t first_bad; /* index of the first element outside atol + rtol*|ref|, or (size_t)-1 */
    size_t n_bad, n_nan;
} cmp_stats;

/* Compares got against ref over n floats with tolerance |got-ref| <= atol + rtol*|ref|. max_rel is
 * max|got-ref| / max|ref| (relative to the tensor's scale). */
static inline cmp_stats cmp_f32(const float *got, const float *ref, size_t n, double atol, double rtol) {
    cmp_stats s = {0, 0, 0, 0, (size_t)-1, 0, 0};
    double dot = 0, ng = 0, nr = 0, nd = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], r = ref[i], d = fabs(g - r);
        if (isnan(g) || isinf(g)) { s.n_nan++; if (s.first_bad == (size_t)-1) s.first_bad = i; s.n_bad++; continue; }
        if (d > s.max_abs) s.max_abs = d;
        if (fabs(r) > maxref) maxref = fabs(r);
        dot += g * r; ng += g * g; nr += r * r; nd += d * d;
        if (d > atol + rtol * fabs(r)) { s.n_bad++; if (s.first_bad == (size_t)-1) s.first_bad = i; }
    }
    s.max_rel = maxref > 0 ? s.max_abs / maxref : s.max_abs;
    s.cosine = (ng > 0 && nr > 0) ? dot / sqrt(ng * nr) : (ng == nr ? 1.0 : 0.0);
    s.rel_l2 = nr > 0 ? sqrt(nd / nr) : sqrt(nd);
    return s;
}

static inline void cmp_print(const char *what, cmp_stats s) {
    printf("  %-40s max_abs %.3e max_rel %.3e rel_l2 %.3e cos %.9f bad %zu nan %zu\n", what, s.max_abs, s.max_rel,
           s.rel_l2, s.cosine, s.n_bad, s.n_nan);
}

/* Deterministic random numbers for tests (splitmix64 + Box-Muller). */
static inline unsigned long long check_rng_next(unsigned long long *s) {
    unsigned long long z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline double check_rng_uniform(unsigned long long *s) {
    return (double)(check_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}
static inline double check_rng_normal(unsigned long long *s) {
    double u1 = check_rng_uniform(s), u2 = check_rng_uniform(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Removes a directory and everything below it (a test's temporary folder); returns 0 on success. Symbolic links
 * are removed, never followed. */
static inline int check_rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int rc = 0;
    char p[4096];
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p) {
            rc = -1; /* a path this long is not one of ours */
            continue;
        }
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rc |= check_rm_tree(p);
        else if (unlink(p) != 0) rc = -1;
    }
    closedir(d);
    return rmdir(dir) != 0 ? -1 : rc;
}

/* Reads a whole file; returns malloc'd bytes (NULL if unreadable). */
static inline unsigned char *check_read_file(const char *path, size_t *len);

#ifdef VITD_EXE
/* Runs `vitd ARGS` (the program under test) with stdout to out_path (NULL: discarded) and stderr captured into
 * err_text (may be NULL) through scratch_dir/stderr.txt; returns the exit code (-1 if it did not exit). */
static inline int check_run_vitd(const char *scratch_dir, const char *args, const char *out_path, char *err_text,
                                 size_t err_cap) {
    char cmd[4096], err_path[1024];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", scratch_dir);
    snprintf(cmd, sizeof cmd, "%s %s > %s 2> %s", VITD_EXE, args, out_path ? out_path : "/dev/null", err_path);
    int st = system(cmd);
    size_t n = 0;
    unsigned char *e = check_read_file(err_path, &n);
    if (err_text) snprintf(err_text, err_cap, "%.*s", (int)(n < err_cap - 1 ? n : err_cap - 1), e ? (char *)e : "");
    free(e);
    unlink(err_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
#endif

/* Reads a whole file; returns malloc'd bytes (NULL if unreadable). */
static inline unsigned char *check_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf && len) *len = (size_t)n;
    return buf;
}

#endif
