/*
 * Self-pipe signal handling. Handlers touch only a sig_atomic_t and write(2),
 * both async-signal-safe; everything else happens in the main loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "signals.h"

static volatile sig_atomic_t pending;
static volatile sig_atomic_t second_stop_exits = 1;
static int pipe_fds[2] = {-1, -1};

static const struct {
    int sig;
    int flag;
} table[] = {
    {SIGTERM, OUTBOX_SIG_STOP},   {SIGINT, OUTBOX_SIG_STOP},     {SIGHUP, OUTBOX_SIG_RELOAD},
    {SIGUSR1, OUTBOX_SIG_REOPEN}, {SIGUSR2, OUTBOX_SIG_RESTART}, {SIGTTIN, OUTBOX_SIG_MORE},
    {SIGTTOU, OUTBOX_SIG_FEWER},  {SIGCHLD, OUTBOX_SIG_CHILD},
};

static void
handler(int sig)
{
    int saved = errno;
    size_t i;

    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (table[i].sig != sig)
            continue;
        if (table[i].flag == OUTBOX_SIG_STOP && (pending & OUTBOX_SIG_STOP)) {
            if (second_stop_exits)
                _exit(1); /* second stop signal: stop at once */
            pending |= OUTBOX_SIG_STOP_AGAIN;
        }
        pending |= table[i].flag;
    }
    if (pipe_fds[1] >= 0)
        (void)!write(pipe_fds[1], "s", 1);
    errno = saved;
}

int
outbox_signals_install(void)
{
    struct sigaction sa;
    size_t i;

    if (pipe_fds[0] < 0) {
        if (pipe(pipe_fds) != 0) {
            log_error("pipe() failed: %s", strerror(errno));
            return -1;
        }
        for (i = 0; i < 2; i++) {
            fcntl(pipe_fds[i], F_SETFL, fcntl(pipe_fds[i], F_GETFL) | O_NONBLOCK);
            fcntl(pipe_fds[i], F_SETFD, FD_CLOEXEC);
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (sigaction(table[i].sig, &sa, NULL) != 0) {
            log_error("sigaction(%d) failed: %s", table[i].sig, strerror(errno));
            return -1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

void
outbox_signals_second_stop_exits(int yes)
{
    second_stop_exits = yes != 0;
}

int
outbox_signals_fd(void)
{
    return pipe_fds[0];
}

int
outbox_signals_take(void)
{
    char buf[64];
    sigset_t all, old;
    int flags;

    while (read(pipe_fds[0], buf, sizeof(buf)) > 0)
        ;
    /* Read-and-clear must not lose a signal arriving in between. */
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    flags = pending;
    pending &= OUTBOX_SIG_STOP; /* keep STOP so a second one exits at once */
    sigprocmask(SIG_SETMASK, &old, NULL);
    return flags;
}

void
outbox_signals_block(int block)
{
    sigset_t set;
    size_t i;

    sigemptyset(&set);
    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        sigaddset(&set, table[i].sig);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}
