/*
 * Logging to stderr or an append-only file. Each event is formatted into
 * one buffer and written with a single write(2), so lines from several
 * processes sharing the file never interleave. The message is escaped
 * (escape.h): text from rows or servers cannot split a line or send
 * terminal control sequences.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "escape.h"
#include "log.h"

static int log_level = OUTBOX_LOG_INFO;
static int log_fd = 2;
static char log_path[1024];
static char log_ident[32] = "outboxd";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static int
open_path(void)
{
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

    if (fd < 0)
        return -1;
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    return 0;
}

int
outbox_log_open(int level, const char *path, const char *ident)
{
    log_level = level;
    if (ident != NULL)
        snprintf(log_ident, sizeof(log_ident), "%s", ident);
    if (path == NULL || path[0] == '\0') {
        log_path[0] = '\0';
        if (log_fd > 2)
            close(log_fd);
        log_fd = 2;
        return 0;
    }
    snprintf(log_path, sizeof(log_path), "%s", path);
    return open_path();
}

int
outbox_log_reopen(void)
{
    if (log_path[0] == '\0')
        return 0;
    return open_path();
}

void
outbox_log_set_level(int level)
{
    log_level = level;
}

int
outbox_log_enabled(int level)
{
    return level <= log_level;
}

void
outbox_log_close(void)
{
    if (log_fd > 2)
        close(log_fd);
    log_fd = 2;
}

void
outbox_log(int level, const char *fmt, ...)
{
    char buf[2048], msg[1536];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    size_t n, m;
    int saved = errno;

    if (level > log_level)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, ".%03dZ %s[%d] %s: ", (int)(tv.tv_usec / 1000),
                          log_ident, (int)getpid(),
                          level_names[level < 0   ? 0
                                      : level > 3 ? 3
                                                  : level]);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* a trailing newline (libpq's messages end with one) is not escaped */
    for (m = strlen(msg); m > 0 && (msg[m - 1] == '\n' || msg[m - 1] == ' '); m--)
        ;
    if (n < sizeof(buf) - 1) {
        outbox_escape(buf + n, sizeof(buf) - 1 - n, msg, m, 0);
        n += strlen(buf + n);
    }
    buf[n++] = '\n';
    if (write(log_fd, buf, n) < 0 && log_fd != 2)
        (void)!write(2, buf, n);
    errno = saved;
}
