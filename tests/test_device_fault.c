/* labels: http */
/* test_device_fault.c — a device that dies under the server (issue 13): with VITD_FAULT_INJECT=batch:N the
 * encoder's device fails at the batch after N good ones (simulated on the CPU backend; on the GPU a kernel writes
 * to an invalid address, a real sticky CUDA error). Then:
 *   - the failing request gets an error answer naming the device failure (500), never a hang;
 *   - /ready answers 503 {"status":"device_failed"} while the process winds down;
 *   - a request in flight at that moment is still answered (503: it cannot be encoded any more);
 *   - the process exits with status 3, so an orchestrator restarts it.
 * The CPU case always runs; the GPU case when the build has CUDA and a GPU answers. Skips (77) on a build without
 * VITD_FAULT_INJECTION. */
#include <signal.h>
#include <stdint.h>

#include "check.h"
#include "loopback.h"
#define IO_TIMEOUT_S 60
#include "serve_check.h"

static bool log_has(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* A request whose upload stops after 10 bytes of its image (the caller sends the rest later): it holds a drain
 * open. Returns the connection, or -1 (a failed check). */
static int hold_upload(int port, const image_file *img) {
    int fd = loopback_connect(port, 30);
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      "Content-Length: %zu\r\n\r\n", img->len);
    CHECK(fd >= 0 && loopback_send_all(fd, head, (size_t)hn) && loopback_send_all(fd, img->data, 10));
    usleep(200 * 1000);
    return fd;
}

/* Starts a server on backend whose device fails at batch inject_batch (VITD_FAULT_INJECT=batch:N). Returns 0 when
 * it is up, -1 when a GPU server cannot start here (no GPU, or no CUDA in the build), -2 when it did not start for
 * another reason (a failed check). */
static int start_faulty(server *s, const char *dir, const char *model, const char *backend, int inject_batch,
                        const char *name) {
    char inject[32], a_backend[64];
    snprintf(inject, sizeof inject, "batch:%d", inject_batch);
    snprintf(a_backend, sizeof a_backend, "--backend=%s", backend);
    setenv("VITD_FAULT_INJECT", inject, 1);
    const char *extra[] = {a_backend, "--no-warmup", "--drain-timeout-ms=20000", "--output-cache-bytes=0", NULL};
    bool up = start_server(s, dir, model, name, extra);
    unsetenv("VITD_FAULT_INJECT");
    if (up) return 0;
    server_wait_exit(s, 10);
    /* no GPU here, or a build without CUDA: the GPU case cannot run. Anything else is a failure to start. */
    if (strcmp(backend, "cpu") != 0 &&
        (log_has(s->log_path, "no usable CUDA GPU") || log_has(s->log_path, "built without CUDA")))
        return -1;
    CHECK_MSG(0, "the %s server did not start (see %s)", backend, s->log_path);
    return -2;
}

/* Returns 0 when it ran, 77 when this build ignores VITD_FAULT_INJECT, or start_faulty's -1 / -2. */
static int run_case(const char *dir, const char *model, const char *backend, const image_file *img) {
    printf("backend %s\n", backend);
    char name[64];
    snprintf(name, sizeof name, "fault_%s", backend);
    server s;
    int up = start_faulty(&s, dir, model, backend, 3, name);
    if (up != 0) return up;
    if (!log_has(s.log_path, "VITD_FAULT_INJECT")) {
        kill(s.pid, SIGTERM);
        server_wait_exit(&s, 30);
        return 77;
    }
    resp r;
    for (int i = 0; i < 3; i++) {
        CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\n", img->data, img->len, &r));
        CHECK_MSG(r.status == 200, "good batch %d: %d %s", i, r.status, r.body ? r.body : "");
        resp_free(&r);
    }
    /* a request that is still uploading when the device fails: it holds the drain open */
    int held = hold_upload(s.port, img);
    /* the fourth batch: the device fails */
    double t0 = vitd_now();
    CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\n", img->data, img->len, &r));
    printf("  the failing request: %d in %.0f ms: %.200s\n", r.status, (vitd_now() - t0) * 1e3,
           r.body ? r.body : "");
    CHECK_MSG(r.status == 500 || r.status == 503, "failing batch answered %d", r.status);
    CHECK(r.body && (strstr(r.body, "device") || strstr(r.body, "CUDA")));
    resp_free(&r);
    usleep(300 * 1000);
    CHECK(http_do(s.port, "GET", "/ready", NULL, NULL, 0, &r));
    printf("  /ready: %d %s", r.status, r.body ? r.body : "\n");
    CHECK(r.status == 503 && r.body && strstr(r.body, "device_failed"));
    resp_free(&r);
    /* the held request finishes its upload and is answered, not dropped */
    CHECK(loopback_send_all(held, img->data + 10, img->len - 10));
    resp hr;
    bool got = read_response(held, &hr, false);
    printf("  the request in flight: %d %.160s\n", got ? hr.status : 0, got && hr.body ? hr.body : "");
    CHECK_MSG(got && hr.status == 503, "in-flight request: %d", got ? hr.status : 0);
    if (got) resp_free(&hr);
    close(held);
    int code = server_wait_exit(&s, 30);
    printf("  exit status %d\n", code);
    CHECK_EQ_INT(3, code);
    CHECK(log_has(s.log_path, "device failed"));
    return 0;
}

/* The device fails during a SIGTERM drain (review of issue 13: the process then exited 0). One good batch, an
 * upload held half-way, SIGTERM, the rest of the upload: its batch is the failing one. Returns like run_case. */
static int run_drain_case(const char *dir, const char *model, const char *backend, const image_file *img) {
    printf("backend %s, the device fails during the drain\n", backend);
    char name[64];
    snprintf(name, sizeof name, "drain_fault_%s", backend);
    server s;
    int up = start_faulty(&s, dir, model, backend, 1, name);
    if (up != 0) return up;
    resp r;
    CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\n", img->data, img->len, &r));
    CHECK_MSG(r.status == 200, "good batch: %d", r.status);
    resp_free(&r);
    int held = hold_upload(s.port, img);
    kill(s.pid, SIGTERM);
    usleep(300 * 1000);
    CHECK(held >= 0 && loopback_send_all(held, img->data + 10, img->len - 10));
    resp hr;
    bool got = held >= 0 && read_response(held, &hr, false);
    printf("  the request whose batch failed: %d %.160s\n", got ? hr.status : 0, got && hr.body ? hr.body : "");
    CHECK_MSG(got && hr.status == 503, "the failing batch during the drain: %d", got ? hr.status : 0);
    if (got) resp_free(&hr);
    if (held >= 0) close(held);
    int code = server_wait_exit(&s, 30);
    printf("  exit status %d\n", code);
    CHECK_EQ_INT(3, code);
    return 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    char dir[] = "/tmp/vitd_test_device_fault_XXXXXX";
    if (!mkdtemp(dir)) SKIP("cannot create a temporary directory");
    char model[600], log[700];
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(log, sizeof log, "%s/demo-model.log", dir);
    char *dm[] = {VITD_EXE, "demo-model", "--preset", "tiny", "--out", model, NULL};
    if (run_tool(dm, log) != 0) SKIP("`vitd demo-model --preset tiny` failed; see %s", log);
    image_file img;
    if (!load_image(&img, "rgb8.png", "image/png")) SKIP("fixture rgb8.png missing");
    int rc = run_case(dir, model, "cpu", &img);
    if (rc == 77) SKIP("this build ignores VITD_FAULT_INJECT (configured with -DVITD_FAULT_INJECTION=OFF)");
    CHECK_MSG(rc == 0, "the cpu server did not start");
    CHECK_MSG(run_drain_case(dir, model, "cpu", &img) == 0, "the cpu server did not start");
    rc = run_case(dir, model, "gpu", &img);
    if (rc == 0) CHECK_MSG(run_drain_case(dir, model, "gpu", &img) == 0, "the gpu server did not start again");
    if (rc == -1) printf("backend gpu: no GPU server here (no CUDA build or no GPU): the GPU case did not run\n");
    free(img.data);
    int result = check_done("test_device_fault");
    if (result == 0) check_rm_tree(dir);
    else fprintf(stderr, "logs kept in %s\n", dir);
    return result;
}
