/*
 * Process control and /proc readings. Children run in their own process
 * group so that terminal signals reach outboxbench alone and so that a
 * SIGKILL of the group also takes what they started. Every wait is bounded.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "util.h"

#define WAIT_POLL_US 5000

pid_t
proc_spawn(char *const argv[], const char *log)
{
    sigset_t all, old;
    pid_t pid;
    int fd;

    /* Signals blocked across fork: the child must not run our handler
     * before it execs (it would only set a flag, but in the wrong process). */
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid = fork();
    if (pid < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        bench_err("fork() for %s failed: %s", argv[0], strerror(errno));
        return -1;
    }
    if (pid == 0) {
        struct sigaction sa;
        int s;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        for (s = 1; s < NSIG; s++)
            sigaction(s, &sa, NULL);
        setpgid(0, 0);
        if ((fd = open("/dev/null", O_RDONLY)) >= 0) {
            dup2(fd, 0);
            close(fd);
        }
        if (log != NULL) {
            fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd < 0) {
                fprintf(stderr, "outboxbench: cannot open %s: %s\n", log, strerror(errno));
                _exit(127);
            }
            dup2(fd, 1);
            dup2(fd, 2);
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
        execv(argv[0], argv);
        fprintf(stderr, "outboxbench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* both sides: no race with the exec */
    sigprocmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* proc_wait() with the child's resource usage (its reaped descendants
 * included) when ru is not NULL. */
static int
wait_ru(pid_t pid, int64_t timeout_ms, int interruptible, int *status, struct rusage *ru)
{
    int64_t deadline = bench_now_us() + timeout_ms * 1000;
    int st = 0;
    pid_t r;

    for (;;) {
        r = wait4(pid, &st, WNOHANG, ru);
        if (r == pid) {
            if (status != NULL)
                *status = st;
            return 1;
        }
        if (r < 0 && errno != EINTR) {
            bench_err("waitpid(%d) failed: %s", (int)pid, strerror(errno));
            return -1;
        }
        if (bench_now_us() >= deadline || (interruptible && bench_stopping()))
            return 0;
        /* not bench_sleep_us: a stop request must not cut an uninterruptible wait */
        usleep(WAIT_POLL_US);
    }
}

int
proc_wait(pid_t pid, int64_t timeout_ms, int interruptible, int *status)
{
    return wait_ru(pid, timeout_ms, interruptible, status, NULL);
}

static double
tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int
proc_stop(pid_t pid, int64_t grace_ms, double *cpu_s)
{
    struct rusage ru;
    int st = 0;

    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    memset(&ru, 0, sizeof(ru));
    if (wait_ru(pid, grace_ms, 0, &st, &ru) == 1) {
        if (cpu_s != NULL)
            *cpu_s = tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
        return st;
    }
    bench_err("pid %d still running %lld ms after SIGTERM: killing its process group", (int)pid,
              (long long)grace_ms);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    if (proc_wait(pid, 5000, 0, &st) == 1)
        return st;
    return -1;
}

int
proc_run(char *const argv[], const char *log, int64_t timeout_ms)
{
    pid_t pid = proc_spawn(argv, log);
    int st = 0, r;

    if (pid < 0)
        return -1;
    r = proc_wait(pid, timeout_ms, 0, &st);
    if (r != 1) {
        bench_err("%s did not finish within %lld ms: killing it", argv[0], (long long)timeout_ms);
        proc_stop(pid, 2000, NULL);
        return -1;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return -1;
}

void
proc_status_text(int status, char *out, size_t len)
{
    if (WIFEXITED(status))
        snprintf(out, len, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, len, "signal %d", WTERMSIG(status));
    else
        snprintf(out, len, "status 0x%x", (unsigned)status);
}

/* Fields of /proc/PID/stat after the command name (which may hold spaces
 * and parentheses, so parsing starts after the last ')'). */
typedef struct pstat {
    pid_t ppid;
    unsigned long long utime, stime, cutime, cstime; /* clock ticks */
} pstat_t;

static int
read_stat(pid_t pid, pstat_t *p)
{
    char path[64], buf[1024], *s;
    FILE *f;
    size_t n;
    int ppid;
    long long cu, cs;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if ((s = strrchr(buf, ')')) == NULL)
        return -1;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime stime cutime cstime */
    if (sscanf(s + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &ppid,
               &p->utime, &p->stime, &cu, &cs) != 5)
        return -1;
    p->ppid = (pid_t)ppid;
    p->cutime = cu > 0 ? (unsigned long long)cu : 0;
    p->cstime = cs > 0 ? (unsigned long long)cs : 0;
    return 0;
}

static long
read_vmhwm(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* "relay" / "keeper" from "outboxd worker --role X ...", else "child". */
static void
read_role(pid_t pid, char *out, size_t len)
{
    char path[64], buf[4096];
    size_t n, i;
    FILE *f;

    snprintf(out, len, "child");
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (i = 0; i < n; i += strlen(buf + i) + 1) {
        if (strcmp(buf + i, "--role") == 0 && i + 7 < n) {
            snprintf(out, len, "%s", buf + i + 7);
            return;
        }
    }
}

int
proc_tree_read(pid_t root, proc_tree_t *t)
{
    double tick = (double)sysconf(_SC_CLK_TCK);
    struct dirent *de;
    pstat_t rs, cs;
    DIR *d;

    memset(t, 0, sizeof(*t));
    if (read_stat(root, &rs) != 0)
        return -1;
    t->root_cpu_s = (double)(rs.utime + rs.stime) / tick;
    /* cutime/cstime: children the root reaped already (a crashed worker). */
    t->cpu_s = (double)(rs.utime + rs.stime + rs.cutime + rs.cstime) / tick;
    if ((d = opendir("/proc")) == NULL)
        return 0;
    while ((de = readdir(d)) != NULL) {
        proc_child_t *c;
        long pid;
        char *end;

        pid = strtol(de->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || read_stat((pid_t)pid, &cs) != 0 || cs.ppid != root)
            continue;
        t->cpu_s += (double)(cs.utime + cs.stime + cs.cutime + cs.cstime) / tick;
        if (t->nchildren == PROC_TREE_MAX)
            continue;
        c = &t->children[t->nchildren++];
        c->pid = (pid_t)pid;
        c->cpu_s = (double)(cs.utime + cs.stime) / tick;
        c->vmhwm_kb = read_vmhwm((pid_t)pid);
        read_role((pid_t)pid, c->role, sizeof(c->role));
    }
    closedir(d);
    return 0;
}

void
proc_log_tail(const char *path, char *out, size_t len)
{
    char line[1024], last[1024] = "";
    FILE *f;

    out[0] = '\0';
    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (line[0] != '\n')
            snprintf(last, sizeof(last), "%s", line);
    }
    fclose(f);
    last[strcspn(last, "\n")] = '\0';
    snprintf(out, len, "%s", last);
}
