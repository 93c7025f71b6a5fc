/* The ceiling: a multithreaded FastCGI responder on Debian's libfcgi (libfcgi-dev), the same routes as
 * apps/bench_app.py minus Django. Built by run.py with:
 *     gcc -O2 -pthread -o .work/libfcgi_responder libfcgi_responder.c -lfcgi
 * Usage: libfcgi_responder 127.0.0.1:PORT|/unix/socket/path [THREADS] (a bare PORT: 127.0.0.1). Stops on SIGTERM
 * (default action).
 * A thread serves one connection at a time, and a kept-alive connection holds its thread while idle: run at
 * least as many threads as nginx may open connections (the client concurrency).
 */
#include <fcgiapp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIG_SIZE 102400
#define ECHO_CHUNK 65536
#define MAX_THREADS 256

static int listen_fd;
static char big_body[BIG_SIZE];

static void reply(FCGX_Request *req, const char *type, const char *body, long length) {
    FCGX_FPrintF(req->out, "Status: 200 OK\r\nContent-Type: %s\r\nContent-Length: %ld\r\n\r\n", type, length);
    FCGX_PutStr(body, (int)length, req->out);
}

static void echo(FCGX_Request *req) {
    const char *header = FCGX_GetParam("CONTENT_LENGTH", req->envp);
    long remaining = header ? atol(header) : 0;
    static __thread char chunk[ECHO_CHUNK];
    FCGX_FPrintF(req->out, "Status: 200 OK\r\nContent-Type: application/octet-stream\r\n"
                           "Content-Length: %ld\r\n\r\n", remaining);
    while (remaining > 0) {
        int want = remaining < ECHO_CHUNK ? (int)remaining : ECHO_CHUNK;
        int got = FCGX_GetStr(chunk, want, req->in);
        if (got <= 0) break;
        FCGX_PutStr(chunk, got, req->out);
        remaining -= got;
    }
}

static void *serve(void *unused) {
    (void)unused;
    FCGX_Request req;
    FCGX_InitRequest(&req, listen_fd, 0);
    for (;;) {
        /* No accept mutex (libfcgi's threaded example has one): with FCGI_KEEP_CONN, FCGX_Accept_r waits
         * for the next request on the kept connection, and holding a lock there would stall every thread.
         * accept() is thread-safe on Linux. */
        if (FCGX_Accept_r(&req) < 0) break;
        const char *path = FCGX_GetParam("DOCUMENT_URI", req.envp);
        if (path == NULL) path = FCGX_GetParam("SCRIPT_NAME", req.envp);
        if (path && strcmp(path, "/hello") == 0) {
            reply(&req, "text/plain", "Hello, world!", 13);
        } else if (path && strcmp(path, "/big") == 0) {
            reply(&req, "application/octet-stream", big_body, BIG_SIZE);
        } else if (path && strcmp(path, "/echo") == 0) {
            echo(&req);
        } else {
            FCGX_FPrintF(req.out, "Status: 404 Not Found\r\nContent-Type: text/plain\r\n"
                                  "Content-Length: 9\r\n\r\nnot found");
        }
        FCGX_Finish_r(&req);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s 127.0.0.1:PORT|/unix/socket/path [THREADS]\n", argv[0]);
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    if (threads < 1 || threads > MAX_THREADS) threads = 8;
    for (int i = 0; i < BIG_SIZE; i++) big_body[i] = (char)(i % 256);
    char address[256];
    /* A path is a unix socket; a bare port (the old form) listens on the loopback address. */
    if (strchr(argv[1], '/') != NULL || strchr(argv[1], ':') != NULL)
        snprintf(address, sizeof address, "%s", argv[1]);
    else
        snprintf(address, sizeof address, "127.0.0.1:%s", argv[1]);
    if (FCGX_Init() != 0) return 1;
    signal(SIGTERM, SIG_DFL); /* FCGX_Init catches SIGTERM for a graceful exit that blocked threads never see */
    listen_fd = FCGX_OpenSocket(address, 128);
    if (listen_fd < 0) {
        perror("FCGX_OpenSocket");
        return 1;
    }
    pthread_t ids[MAX_THREADS];
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, serve, NULL);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    return 0;
}
