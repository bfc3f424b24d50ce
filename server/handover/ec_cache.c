/* ec_cache.c — vLLM EC-transfer cache files and their retention (ec_cache.h).
 *
 * The cache keeps one entry per file it knows (uuid, bytes, modification time), in time order: files found at
 * start are sorted by mtime, later writes append. Retention pops from the front (the oldest) while the total is
 * over max_bytes or the front is older than max_age_s. Files are written outside the lock (st_writer_save: a
 * temporary file beside the final name, fsync, rename, fsync of the directory); only the list and the unlinks of
 * evicted files happen under it. A sweep thread applies the age bound once a minute when no writes come. */
#include "ec_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "content_id.h"
#include "safetensors.h"
#include "util.h"

#define SWEEP_S 60            /* the age bound is applied at least this often */
#define STALE_TMP_S 600       /* temporary files older than this, found at start, are a crash's leftovers */

typedef struct {
    char uuid[CONTENT_ID_UUID_MAX + 1];
    size_t bytes;
    double mtime;             /* wall-clock seconds */
    ino_t ino;                /* with mtime: the file this entry describes (another writer may replace it) */
} entry;

struct ec_cache {
    char dir[4096];
    size_t max_bytes;
    int max_age_s;
    metrics_vitd *m;
    pthread_mutex_t mu;       /* guards everything below */
    pthread_cond_t cv;        /* wakes the sweep (stop) */
    entry *e;                 /* [n], oldest first */
    size_t n, cap;
    size_t total;             /* bytes of e[] */
    bool stop;
    bool sweeping;            /* the sweep thread runs */
    pthread_t sweeper;
};

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *ec_cache_path(const ec_cache *c, const char *uuid, char *buf, size_t n) {
    int w = snprintf(buf, n, "%s/%s/" EC_CACHE_FILE, c->dir, uuid);
    VITD_ASSERT(w > 0 && (size_t)w < n); /* callers size buf for DIR_MAX + a uuid */
    return buf;
}

static void publish(ec_cache *c) {
    if (!c->m) return;
    metrics_set(c->m->ec_bytes_s, (double)c->total);
    metrics_set(c->m->ec_files_s, (double)c->n);
}

/* ---- the list (callers hold mu) ---- */

static void list_remove(ec_cache *c, size_t i) {
    c->total -= c->e[i].bytes;
    memmove(&c->e[i], &c->e[i + 1], (c->n - i - 1) * sizeof *c->e);
    c->n--;
}

static double mtime_of(const struct stat *st) {
    return (double)st->st_mtim.tv_sec + 1e-9 * (double)st->st_mtim.tv_nsec;
}

static void list_append(ec_cache *c, const char *uuid, const struct stat *st) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        entry *ne = realloc(c->e, c->cap * sizeof *ne);
        VITD_ASSERT(ne); /* a few hundred bytes per file: no request can make this large */
        c->e = ne;
    }
    entry *x = &c->e[c->n++];
    snprintf(x->uuid, sizeof x->uuid, "%s", uuid);
    x->bytes = (size_t)st->st_size;
    x->mtime = mtime_of(st);
    x->ino = st->st_ino;
    c->total += x->bytes;
}

/* Forgets uuid's entry, if any. */
static void list_forget(ec_cache *c, const char *uuid) {
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->e[i].uuid, uuid)) {
            list_remove(c, i);
            return;
        }
}

/* Removes entry i, its file and (when empty) its directory — unless the file on disk is no longer the one the
 * entry describes (another replica rewrote it): then the entry is refreshed to that file and moves to the back,
 * and nothing is removed. */
static void evict_at(ec_cache *c, size_t i, bool by_age) {
    char path[4200];
    entry e = c->e[i];
    ec_cache_path(c, e.uuid, path, sizeof path);
    list_remove(c, i);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_ino != e.ino || mtime_of(&st) != e.mtime)) {
        list_append(c, e.uuid, &st);
        return;
    }
    if (unlink(path) != 0 && errno != ENOENT)
        vitd_log(VITD_LOG_WARN, "ec cache: cannot remove %s: %s", path, strerror(errno));
    char *slash = strrchr(path, '/');
    if (slash) {
        *slash = '\0';
        rmdir(path); /* fails harmlessly when a consumer or a temporary file still holds it */
    }
    if (c->m) metrics_inc(by_age ? c->m->ec_evict_age_s : c->m->ec_evict_bytes_s);
}

/* Applies both bounds, oldest first; keep (or NULL: the file just written) is never removed. */
static void apply_bounds(ec_cache *c, const char *keep) {
    double now = wall_now();
    size_t i = 0, budget = 2 * c->n + 1; /* an entry is refreshed at most once, then removed */
    while (i < c->n && budget-- > 0) {
        bool old = c->max_age_s > 0 && now - c->e[i].mtime > c->max_age_s;
        bool big = c->max_bytes > 0 && c->total > c->max_bytes;
        if (!old && !big) break;
        if (keep && !strcmp(c->e[i].uuid, keep)) {
            i++;
            continue;
        }
        evict_at(c, i, old);
    }
    publish(c);
}

/* ---- start-up scan ---- */

static int by_mtime(const void *a, const void *b) {
    double x = ((const entry *)a)->mtime, y = ((const entry *)b)->mtime;
    return x < y ? -1 : x > y;
}

/* Learns <dir>/<uuid>/encoder_cache.safetensors files and removes stale temporary files beside them. */
static vitd_status scan(ec_cache *c, vitd_err *err) {
    DIR *d = opendir(c->dir);
    if (!d) return vitd_fail(err, VITD_E_IO, "ec_cache_dir %s: cannot read it: %s", c->dir, strerror(errno));
    double now = wall_now();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !content_id_uuid_ok(de->d_name, strlen(de->d_name), NULL)) continue;
        int sfd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        DIR *sd = sfd >= 0 ? fdopendir(sfd) : NULL;
        if (!sd) {
            if (sfd >= 0) close(sfd);
            continue;
        }
        struct dirent *fe;
        struct stat st;
        while ((fe = readdir(sd)) != NULL) {
            if (strncmp(fe->d_name, EC_CACHE_FILE ".tmp", strlen(EC_CACHE_FILE ".tmp")) != 0) continue;
            if (fstatat(sfd, fe->d_name, &st, 0) == 0 && now - (double)st.st_mtime > STALE_TMP_S)
                unlinkat(sfd, fe->d_name, 0);
        }
        bool found = fstatat(sfd, EC_CACHE_FILE, &st, 0) == 0 && S_ISREG(st.st_mode);
        closedir(sd); /* closes sfd */
        if (found) list_append(c, de->d_name, &st);
    }
    closedir(d);
    if (c->n > 1) qsort(c->e, c->n, sizeof *c->e, by_mtime);
    return VITD_OK;
}

/* ---- sweep thread ---- */

static void *sweep_main(void *arg) {
    ec_cache *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int every = c->max_age_s < SWEEP_S ? c->max_age_s : SWEEP_S;
        ts.tv_sec += every > 0 ? every : SWEEP_S;
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        if (!c->stop) apply_bounds(c, NULL);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- public ---- */

vitd_status ec_cache_open(const char *dir, size_t max_bytes, int max_age_s, metrics_vitd *metrics, ec_cache **out,
                          vitd_err *err) {
    *out = NULL;
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    if (dl == 0 || dl >= sizeof(((ec_cache *)0)->dir) - 200)
        return vitd_fail(err, VITD_E_INVALID_ARG, "ec_cache_dir: empty or longer than 3800 bytes");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return vitd_fail(err, VITD_E_IO, "ec_cache_dir %s: cannot create it: %s", dir, strerror(errno));
    ec_cache *c = xcalloc(1, sizeof *c);
    memcpy(c->dir, dir, dl);
    c->max_bytes = max_bytes;
    c->max_age_s = max_age_s;
    c->m = metrics;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    vitd_status st = scan(c, err);
    if (st) {
        ec_cache_free(c);
        return st;
    }
    size_t found = c->n, found_bytes = c->total;
    apply_bounds(c, NULL);
    vitd_log(VITD_LOG_INFO, "ec cache %s: found %zu files (%zu bytes), keeping %zu (%zu bytes)", c->dir, found,
             found_bytes, c->n, c->total);
    if (max_age_s > 0) {
        if (pthread_create(&c->sweeper, NULL, sweep_main, c) != 0) {
            ec_cache_free(c);
            return vitd_fail(err, VITD_E_INTERNAL, "ec cache: cannot start the sweep thread");
        }
        c->sweeping = true;
    }
    *out = c;
    return VITD_OK;
}

/* Produces the concat rows as float32 for the safetensors writer (which rounds them to bfloat16). */
static vitd_status fill_rows(void *user, int64_t first, int64_t count, float *out, vitd_err *err) {
    (void)err;
    const handover_src *s = user;
    int64_t D = s->D, width = D * (1 + s->k);
    while (count > 0) {
        int64_t t = first / width, col = first % width, seg = col / D, j = col % D;
        int64_t run = D - j < count ? D - j : count;
        size_t off = (size_t)((seg == 0 ? t : (seg - 1) * s->rows + t) * D + j);
        const float *x = reply_row_f32(seg == 0 ? s->emb : s->ds, s->bf16, off, (size_t)run, out);
        if (x != out) memcpy(out, x, (size_t)run * sizeof(float));
        out += run;
        first += run;
        count -= run;
    }
    return VITD_OK;
}

/* Writes uuid's file: its directory (never through a symbolic link), then the tensor through a temporary file
 * and rename (st_writer_save). */
static vitd_status write_file(ec_cache *c, const char *uuid, const handover_src *src, const vitd_grid *grid,
                              vitd_err *err) {
    char path[4200], val[96];
    snprintf(path, sizeof path, "%s/%s", c->dir, uuid);
    struct stat ds;
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return vitd_fail(err, VITD_E_IO, "ec cache: cannot create %s: %s", path, strerror(errno));
    if (lstat(path, &ds) != 0 || !S_ISDIR(ds.st_mode))
        return vitd_fail(err, VITD_E_IO, "ec cache: %s is not a directory (a symbolic link is not followed)", path);
    ec_cache_path(c, uuid, path, sizeof path);
    st_writer *w = st_writer_create();
    int64_t shape[2] = {src->rows, (int64_t)src->D * (1 + src->k)};
    vitd_status st = st_writer_set_metadata(w, "producer", "vitd", err);
    snprintf(val, sizeof val, "[%d, %d, %d]", grid->t, grid->h, grid->w);
    if (!st) st = st_writer_set_metadata(w, "image_grid_thw", val, err);
    snprintf(val, sizeof val, "%d", src->k);
    if (!st) st = st_writer_set_metadata(w, "deepstack_layers", val, err);
    if (!st) st = st_writer_add_fill(w, EC_CACHE_TENSOR, ST_BF16, 2, shape, fill_rows, (void *)src, err);
    if (!st) st = st_writer_save(w, path, err);
    st_writer_free(w);
    return st;
}

vitd_status ec_cache_put(ec_cache *c, const char *uuid, const handover_src *src, const vitd_grid *grid,
                         vitd_err *err) {
    double t0 = vitd_now();
    vitd_status st = VITD_OK;
    if (!content_id_uuid_ok(uuid, strlen(uuid), err)) {
        st = VITD_E_INVALID_ARG;
        goto done;
    }
    /* while it is written, no bound may remove this uuid's file or directory: forget its entry first */
    pthread_mutex_lock(&c->mu);
    list_forget(c, uuid);
    pthread_mutex_unlock(&c->mu);
    st = write_file(c, uuid, src, grid, err);
    if (st == VITD_E_IO) /* another replica's retention may remove the directory between mkdir and the write */
        st = write_file(c, uuid, src, grid, err);
    if (st) goto done;
    char path[4200];
    struct stat sb;
    if (stat(ec_cache_path(c, uuid, path, sizeof path), &sb) != 0) {
        st = vitd_fail(err, VITD_E_IO, "ec cache: %s vanished after it was written: %s", path, strerror(errno));
        goto done;
    }
    pthread_mutex_lock(&c->mu);
    list_forget(c, uuid); /* a concurrent put of the same uuid */
    list_append(c, uuid, &sb);
    apply_bounds(c, uuid);
    pthread_mutex_unlock(&c->mu);
done:
    if (c->m) {
        metrics_inc(st ? c->m->ec_write_err_s : c->m->ec_write_ok_s);
        if (!st) metrics_observe(c->m->ec_write_seconds_s, vitd_now() - t0);
    }
    return st;
}

void ec_cache_stats(ec_cache *c, size_t *files, size_t *bytes) {
    pthread_mutex_lock(&c->mu);
    if (files) *files = c->n;
    if (bytes) *bytes = c->total;
    pthread_mutex_unlock(&c->mu);
}

void ec_cache_free(ec_cache *c) {
    if (!c) return;
    if (c->sweeping) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->sweeper, NULL);
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->e);
    free(c);
}
