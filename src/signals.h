/*
 * Signal handling: handlers only set a flag and write one byte to a
 * self-pipe; the main loop polls the pipe's read end and takes the flags.
 * A second SIGTERM/SIGINT while a stop is pending exits at once (or is
 * reported, for the supervisor).
 */
#ifndef OUTBOX_SIGNALS_H
#define OUTBOX_SIGNALS_H

enum {
    OUTBOX_SIG_STOP = 1 << 0,      /* TERM, INT */
    OUTBOX_SIG_RELOAD = 1 << 1,    /* HUP */
    OUTBOX_SIG_REOPEN = 1 << 2,    /* USR1 */
    OUTBOX_SIG_RESTART = 1 << 3,   /* USR2 */
    OUTBOX_SIG_MORE = 1 << 4,      /* TTIN */
    OUTBOX_SIG_FEWER = 1 << 5,     /* TTOU */
    OUTBOX_SIG_CHILD = 1 << 6,     /* CHLD */
    OUTBOX_SIG_STOP_AGAIN = 1 << 7 /* TERM/INT while a stop is pending (see below) */
};

/* By default a second TERM/INT exits at once (_exit(1)) from the handler;
 * with 0, it is reported as OUTBOX_SIG_STOP_AGAIN for the main loop (the
 * supervisor, which must kill its workers first). */
void outbox_signals_second_stop_exits(int yes);

/* Install handlers; PIPE is ignored. 0, or -1 (logged). */
int outbox_signals_install(void);
/* Read end of the self-pipe, for poll(). */
int outbox_signals_fd(void);
/* Return and clear the pending flags; drains the pipe. */
int outbox_signals_take(void);
/* Block / unblock the handled signals in the calling thread (block before
 * starting library threads so they never take a signal). */
void outbox_signals_block(int block);

#endif
