/*
 * Levelled logging: one line per event, "time level [pid] message", to
 * stderr or a file reopened on SIGUSR1. Nothing is logged per message at
 * info level. Not async-signal-safe: call from main loops only.
 */
#ifndef OUTBOX_LOG_H
#define OUTBOX_LOG_H

enum { OUTBOX_LOG_ERROR = 0, OUTBOX_LOG_WARN, OUTBOX_LOG_INFO, OUTBOX_LOG_DEBUG };

/* path NULL or "": stderr. Returns 0, or -1 with errno if the file cannot
 * be opened (logging then goes to stderr). */
int outbox_log_open(int level, const char *path, const char *ident);
int outbox_log_reopen(void); /* same path; 0 or -1 */
void outbox_log_set_level(int level);
int outbox_log_enabled(int level);
void outbox_log_close(void);

void outbox_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) outbox_log(OUTBOX_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) outbox_log(OUTBOX_LOG_WARN, __VA_ARGS__)
#define log_info(...) outbox_log(OUTBOX_LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (outbox_log_enabled(OUTBOX_LOG_DEBUG))                                                  \
            outbox_log(OUTBOX_LOG_DEBUG, __VA_ARGS__);                                             \
    } while (0)

#endif
