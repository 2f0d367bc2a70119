/*
 * Integration-test harness (see harness.h): reads the env file servers.sh
 * writes, makes per-test databases, spawns and reaps processes, and drives
 * servers.sh for private servers. Every wait is bounded; every failure fails
 * the running cmocka test with one message naming what failed.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define TH_SCRIPT_TIMEOUT_MS (240 * 1000)
#define TH_MAX_PRIVATE 8

/* ---- small utilities ---------------------------------------------------- */

int64_t
th_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
th_sleep_ms(int64_t ms)
{
    struct timespec ts;

    if (ms <= 0) {
        return;
    }
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000;
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

void
th_unique(char *out, size_t len, const char *prefix)
{
    static unsigned n;

    snprintf(out, len, "%s_%ld_%u", prefix, (long)getpid(), ++n);
}

void
th_bin(char *out, size_t len, const char *name)
{
    const char *dir = getenv("OUTBOX_BIN");

    if (dir == NULL || *dir == '\0') {
        fail_msg("OUTBOX_BIN is not set (run the test through ctest)");
    }
    if ((size_t)snprintf(out, len, "%s/%s", dir, name) >= len) {
        fail_msg("th_bin: path of %s too long", name);
    }
    if (access(out, X_OK) != 0) {
        fail_msg("th_bin: %s is not an executable: %s", out, strerror(errno));
    }
}

/*
 * One value of the env file: shell words with '...' (literal), "..." (with
 * \ escapes) and bare \x, as written by servers.sh or by hand.
 */
static int
unquote(const char *in, char *out, size_t len)
{
    size_t o = 0;
    char q = 0;

    for (; *in != '\0' && *in != '\n'; in++) {
        char c = *in;

        if (q == '\'') {
            if (c == '\'') {
                q = 0;
                continue;
            }
        } else if (q == '"') {
            if (c == '"') {
                q = 0;
                continue;
            }
            if (c == '\\' && (in[1] == '"' || in[1] == '\\' || in[1] == '$' || in[1] == '`')) {
                c = *++in;
            }
        } else {
            if (c == '\'' || c == '"') {
                q = c;
                continue;
            }
            if (c == '\\' && in[1] != '\0' && in[1] != '\n') {
                c = *++in;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                break;
            }
        }
        if (o + 1 >= len) {
            return -1;
        }
        out[o++] = c;
    }
    if (q != 0) {
        return -1;
    }
    out[o] = '\0';
    return 0;
}

static void
copy_field(char *dst, size_t len, const char *val, const char *key)
{
    if ((size_t)snprintf(dst, len, "%s", val) >= len) {
        fail_msg("env: value of %s too long", key);
    }
}

static void
env_set(th_env_t *e, const char *key, const char *val)
{
    if (strcmp(key, "OUTBOX_TEST_DB") == 0) {
        copy_field(e->pg_admin, sizeof(e->pg_admin), val, key);
    } else if (strcmp(key, "OUTBOX_TEST_PG_HOST") == 0) {
        copy_field(e->pg_host, sizeof(e->pg_host), val, key);
    } else if (strcmp(key, "OUTBOX_TEST_PG_PORT") == 0) {
        e->pg_port = atoi(val);
    } else if (strcmp(key, "OUTBOX_TEST_PG_USER") == 0) {
        copy_field(e->pg_user, sizeof(e->pg_user), val, key);
    } else if (strcmp(key, "OUTBOX_TEST_NATS") == 0) {
        copy_field(e->nats_url, sizeof(e->nats_url), val, key);
    } else if (strcmp(key, "OUTBOX_TEST_NATS_PORT") == 0) {
        e->nats_port = atoi(val);
    } else if (strcmp(key, "OUTBOX_TEST_DIR") == 0) {
        copy_field(e->dir, sizeof(e->dir), val, key);
    } else if (strcmp(key, "OUTBOX_TEST_NATS_PID") == 0) {
        e->nats_pid = atoi(val);
    } else if (strcmp(key, "OUTBOX_TEST_PG_PID") == 0) {
        e->pg_pid = atoi(val);
    }
}

static void
env_load_file(th_env_t *e, const char *path)
{
    char line[2048], val[1024];
    FILE *f;
    int lineno = 0;

    memset(e, 0, sizeof(*e));
    f = fopen(path, "r");
    if (f == NULL) {
        fail_msg("cannot open %s: %s (did the servers fixture run?)", path, strerror(errno));
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line, *eq;

        lineno++;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (*p == '#' || *p == '\n' || *p == '\0') {
            continue;
        }
        if (strncmp(p, "export ", 7) == 0) {
            p += 7;
        }
        eq = strchr(p, '=');
        if (eq == NULL || unquote(eq + 1, val, sizeof(val)) != 0) {
            fclose(f);
            fail_msg("%s:%d: malformed line", path, lineno);
        }
        *eq = '\0';
        env_set(e, p, val);
    }
    fclose(f);
    if (e->pg_admin[0] == '\0' || e->nats_url[0] == '\0') {
        fail_msg("%s lacks OUTBOX_TEST_DB or OUTBOX_TEST_NATS", path);
    }
}

void
th_env_load(th_env_t *e)
{
    const char *dir = getenv("OUTBOX_TESTENV");
    const char *db = getenv("OUTBOX_TEST_DB");
    const char *nats = getenv("OUTBOX_TEST_NATS");
    char path[PATH_MAX];

    if (dir != NULL && *dir != '\0') {
        snprintf(path, sizeof(path), "%s/env", dir);
        env_load_file(e, path);
        return;
    }
    /* Run by hand against one's own servers. */
    if (db != NULL && *db != '\0' && nats != NULL && *nats != '\0') {
        memset(e, 0, sizeof(*e));
        env_set(e, "OUTBOX_TEST_DB", db);
        env_set(e, "OUTBOX_TEST_NATS", nats);
        return;
    }
    fail_msg("OUTBOX_TESTENV is not set: run through ctest (fixture \"servers\"), or set "
             "OUTBOX_TEST_DB and OUTBOX_TEST_NATS");
}

/* ---- PostgreSQL --------------------------------------------------------- */

PGconn *
th_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);

    if (c == NULL) {
        fail_msg("PQconnectdb(%s): out of memory", conninfo);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        PQfinish(c);
        fail_msg("connect to \"%s\" failed: %s", conninfo, msg);
    }
    return c;
}

static char *
vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    char *s;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || (s = malloc((size_t)n + 1)) == NULL) {
        fail_msg("th: cannot format SQL");
    }
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* Runs sql; on error fails the test naming the statement. Frees sql. */
static PGresult *
exec_or_fail(PGconn *c, char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[512], stmt[256];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        snprintf(stmt, sizeof(stmt), "%s", sql);
        PQclear(r);
        free(sql);
        fail_msg("SQL failed: %s -- in: %s", msg, stmt);
    }
    free(sql);
    return r;
}

void
th_exec(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql;

    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    PQclear(exec_or_fail(c, sql));
}

long long
th_query_ll(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql, stmt[256];
    PGresult *r;
    long long v;

    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    snprintf(stmt, sizeof(stmt), "%s", sql);
    r = exec_or_fail(c, sql);
    if (PQntuples(r) < 1 || PQnfields(r) < 1 || PQgetisnull(r, 0, 0)) {
        PQclear(r);
        fail_msg("query returned no value: %s", stmt);
    }
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* Append " key=value" to a conninfo, quoted only when libpq needs it. */
static void
conninfo_add(char *out, size_t len, const char *key, const char *val)
{
    size_t o = strlen(out);
    int quote = *val == '\0' || strpbrk(val, " \t\n\r\f\v'\\") != NULL;

    o += (size_t)snprintf(out + o, o < len ? len - o : 0, "%s%s=%s", o > 0 ? " " : "", key,
                          quote ? "'" : "");
    for (; *val != '\0' && o + 3 < len; val++) {
        if (*val == '\'' || *val == '\\') {
            out[o++] = '\\';
        }
        out[o++] = *val;
    }
    if (*val != '\0' || o + 2 >= len) {
        fail_msg("conninfo too long");
    }
    if (quote) {
        out[o++] = '\'';
    }
    out[o] = '\0';
}

/* The admin conninfo with dbname replaced (keeps host, port, user, ...). */
static void
conninfo_with_db(const char *admin, const char *db, char *out, size_t len)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(admin, &err), *o;

    if (opts == NULL) {
        char msg[256];

        snprintf(msg, sizeof(msg), "%s", err != NULL ? err : "out of memory");
        PQfreemem(err);
        fail_msg("bad admin conninfo \"%s\": %s", admin, msg);
    }
    out[0] = '\0';
    for (o = opts; o->keyword != NULL; o++) {
        if (o->val != NULL && *o->val != '\0' && strcmp(o->keyword, "dbname") != 0) {
            conninfo_add(out, len, o->keyword, o->val);
        }
    }
    PQconninfoFree(opts);
    conninfo_add(out, len, "dbname", db);
}

static void
conninfo_dbname(const char *conninfo, char *out, size_t len)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL), *o;

    out[0] = '\0';
    if (opts == NULL) {
        fail_msg("bad conninfo \"%s\"", conninfo);
    }
    for (o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL) {
            snprintf(out, len, "%s", o->val);
        }
    }
    PQconninfoFree(opts);
    if (out[0] == '\0') {
        fail_msg("conninfo \"%s\" names no database", conninfo);
    }
}

void
th_db_create(const th_env_t *e, const char *prefix, char *conninfo, size_t len)
{
    static unsigned n;
    char name[64];
    size_t i;
    PGconn *c;

    /* A plain lower-case identifier: no quoting surprises in tests' SQL. */
    snprintf(name, sizeof(name), "%.40s_%ld_%u", prefix, (long)getpid(), ++n);
    for (i = 0; name[i] != '\0'; i++) {
        char ch = name[i];

        if (ch >= 'A' && ch <= 'Z') {
            name[i] = (char)(ch - 'A' + 'a');
        } else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) {
            name[i] = '_';
        }
    }
    c = th_connect(e->pg_admin);
    th_exec(c, "CREATE DATABASE \"%s\"", name);
    PQfinish(c);
    conninfo_with_db(e->pg_admin, name, conninfo, len);
}

void
th_db_drop(const th_env_t *e, const char *conninfo)
{
    char name[128];
    PGconn *c;

    conninfo_dbname(conninfo, name, sizeof(name));
    if (strchr(name, '"') != NULL) {
        fail_msg("th_db_drop: odd database name %s", name);
    }
    c = th_connect(e->pg_admin);
    th_exec(c, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    PQfinish(c);
}

/* ---- processes ---------------------------------------------------------- */

/*
 * fork + exec. The child gets default signal handling, an empty mask,
 * /dev/null as stdin, and dies with SIGTERM if the test process dies, so a
 * crashed test leaves no daemon behind. envp NULL: inherit.
 */
static pid_t
spawn_env(char *const argv[], const char *logfile, char *const envp[])
{
    static const int sigs[] = {SIGPIPE, SIGCHLD, SIGINT,  SIGTERM,
                               SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2};
    char failmsg[600];
    pid_t parent = getpid(), pid;
    int logfd = -1;
    size_t i;

    if (logfile != NULL) {
        logfd = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0) {
            fail_msg("open(\"%s\") failed: %s", logfile, strerror(errno));
        }
    }
    snprintf(failmsg, sizeof(failmsg), "th_spawn: exec %s failed\n", argv[0]);
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        int err = errno;

        if (logfd >= 0) {
            close(logfd);
        }
        fail_msg("fork failed: %s", strerror(err));
    }
    if (pid == 0) {
        /* Child: async-signal-safe calls only until exec. */
        struct sigaction sa;
        sigset_t none;
        int nullfd;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
            sigaction(sigs[i], &sa, NULL);
        }
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(127);
        }
        nullfd = open("/dev/null", O_RDONLY);
        if (nullfd >= 0) {
            dup2(nullfd, STDIN_FILENO);
            if (nullfd != STDIN_FILENO) {
                close(nullfd);
            }
        }
        if (logfd >= 0) {
            dup2(logfd, STDOUT_FILENO);
            dup2(logfd, STDERR_FILENO);
        }
        if (envp != NULL) {
            execve(argv[0], argv, envp);
        } else {
            execv(argv[0], argv);
        }
        if (write(STDERR_FILENO, failmsg, strlen(failmsg)) < 0) {
            /* nothing more to do */
        }
        _exit(127);
    }
    if (logfd >= 0) {
        close(logfd);
    }
    return pid;
}

pid_t
th_spawn(char *const argv[], const char *logfile)
{
    return spawn_env(argv, logfile, NULL);
}

int
th_wait(pid_t pid, int64_t timeout_ms, int *status)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    int st = 0;

    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);

        if (r == pid) {
            if (status != NULL) {
                *status = st;
            }
            return 1;
        }
        if (r < 0 && errno != EINTR) {
            fail_msg("waitpid(%ld) failed: %s", (long)pid, strerror(errno));
        }
        if (th_now_ms() >= deadline) {
            return 0;
        }
        th_sleep_ms(10);
    }
}

int
th_stop(pid_t pid, int64_t timeout_ms)
{
    int st = 0;

    if (kill(pid, SIGTERM) != 0 && errno != ESRCH) {
        fail_msg("kill(%ld, TERM) failed: %s", (long)pid, strerror(errno));
    }
    if (th_wait(pid, timeout_ms, &st)) {
        return st;
    }
    kill(pid, SIGKILL);
    if (!th_wait(pid, 10000, &st)) {
        fail_msg("process %ld survived SIGKILL for 10 s", (long)pid);
    }
    return st;
}

/* ---- private servers ---------------------------------------------------- */

static void
script_path(char *out, size_t len)
{
    const char *src = getenv("OUTBOX_SOURCE");
    char here[PATH_MAX], *slash;

    if (src != NULL && *src != '\0') {
        snprintf(out, len, "%s/tests/harness/servers.sh", src);
        return;
    }
    /* CMake compiles with absolute paths, so this file's directory works. */
    snprintf(here, sizeof(here), "%s", __FILE__);
    slash = strrchr(here, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    snprintf(out, len, "%s/servers.sh", slash != NULL ? here : ".");
}

/* Runs "servers.sh CMD DIR" without the variables that would make it point
 * at external servers: private servers are always our own. 0 on success. */
static int
run_script(const char *script, const char *cmd, const char *dir)
{
    char *argv[] = {"/bin/bash", (char *)script, (char *)cmd, (char *)dir, NULL};
    char **envp;
    size_t n = 0, k = 0;
    pid_t pid;
    int st = 0;

    while (environ[n] != NULL) {
        n++;
    }
    envp = calloc(n + 1, sizeof(*envp));
    if (envp == NULL) {
        fail_msg("out of memory");
    }
    for (n = 0; environ[n] != NULL; n++) {
        if (strncmp(environ[n], "OUTBOX_TEST_DB=", 15) != 0 &&
            strncmp(environ[n], "OUTBOX_TEST_NATS=", 17) != 0) {
            envp[k++] = environ[n];
        }
    }
    pid = spawn_env(argv, NULL, envp);
    free(envp);
    if (!th_wait(pid, TH_SCRIPT_TIMEOUT_MS, &st)) {
        th_stop(pid, 5000);
        fprintf(stderr, "servers.sh %s %s: timed out\n", cmd, dir);
        return -1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "servers.sh %s %s: exit status %d\n", cmd, dir,
                WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        return -1;
    }
    return 0;
}

/* Removes DIR once the script has emptied it (best effort). */
static void
remove_dir(const char *dir)
{
    static const char *const left[] = {"env", "state", "env.tmp", "state.tmp"};
    char p[PATH_MAX];
    size_t i;

    for (i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, left[i]);
        unlink(p);
    }
    rmdir(dir);
}

/*
 * env.dir is the servers' temp dir (the contract); the script's state dir
 * (the DIR argument) is recorded in it by servers.sh as "state-dir", so a
 * copy of a th_servers_t works as well as the original.
 */
static void
state_dir(const th_servers_t *s, char *out, size_t len)
{
    char p[PATH_MAX];
    FILE *f;

    snprintf(p, sizeof(p), "%s/state-dir", s->env.dir);
    f = fopen(p, "r");
    if (f == NULL) {
        fail_msg("cannot open %s: %s (servers not started?)", p, strerror(errno));
    }
    if (fgets(out, (int)len, f) == NULL) {
        out[0] = '\0';
    }
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
    if (out[0] == '\0') {
        fail_msg("%s is empty", p);
    }
}

/* A test that fails between start and stop longjmps past its stop call;
 * these copies let an atexit handler stop such servers. */
static char running[TH_MAX_PRIVATE][PATH_MAX];
static char running_script[PATH_MAX];

static void
stop_leftovers(void)
{
    size_t i;

    for (i = 0; i < TH_MAX_PRIVATE; i++) {
        if (running[i][0] != '\0') {
            run_script(running_script, "stop", running[i]);
            remove_dir(running[i]);
            running[i][0] = '\0';
        }
    }
}

static void
track(const char *script, const char *dir, int on)
{
    static int registered;
    size_t i;

    if (!registered) {
        atexit(stop_leftovers);
        registered = 1;
    }
    snprintf(running_script, sizeof(running_script), "%s", script);
    for (i = 0; i < TH_MAX_PRIVATE; i++) {
        if (on && running[i][0] == '\0') {
            snprintf(running[i], sizeof(running[i]), "%s", dir);
            return;
        }
        if (!on && strcmp(running[i], dir) == 0) {
            running[i][0] = '\0';
            return;
        }
    }
}

void
th_servers_start(th_servers_t *s)
{
    char dir[] = "/tmp/outbox-th.XXXXXX", env[PATH_MAX];

    memset(s, 0, sizeof(*s));
    script_path(s->script, sizeof(s->script));
    if (access(s->script, R_OK) != 0) {
        fail_msg("servers.sh not found at %s (set OUTBOX_SOURCE)", s->script);
    }
    if (mkdtemp(dir) == NULL) {
        fail_msg("mkdtemp(%s) failed: %s", dir, strerror(errno));
    }
    if (run_script(s->script, "start", dir) != 0) {
        run_script(s->script, "stop", dir);
        remove_dir(dir);
        fail_msg("private servers failed to start (see servers.sh output above)");
    }
    track(s->script, dir, 1);
    snprintf(env, sizeof(env), "%s/env", dir);
    env_load_file(&s->env, env);
}

void
th_servers_stop(th_servers_t *s)
{
    char dir[PATH_MAX];
    int rc;

    if (s->env.dir[0] == '\0') {
        return;
    }
    state_dir(s, dir, sizeof(dir));
    track(s->script, dir, 0);
    rc = run_script(s->script, "stop", dir);
    remove_dir(dir);
    s->env.dir[0] = '\0';
    if (rc != 0) {
        fail_msg("servers.sh stop failed");
    }
}

static void
servers_cmd(th_servers_t *s, const char *cmd)
{
    char dir[PATH_MAX], env[PATH_MAX];

    if (s->env.dir[0] == '\0') {
        fail_msg("%s: private servers not started", cmd);
    }
    state_dir(s, dir, sizeof(dir));
    if (run_script(s->script, cmd, dir) != 0) {
        fail_msg("servers.sh %s failed", cmd);
    }
    snprintf(env, sizeof(env), "%s/env", dir);
    env_load_file(&s->env, env);
}

void
th_pg_stop(th_servers_t *s)
{
    servers_cmd(s, "pg-stop");
}

void
th_pg_start(th_servers_t *s)
{
    servers_cmd(s, "pg-start");
}

void
th_nats_stop(th_servers_t *s)
{
    servers_cmd(s, "nats-stop");
}

void
th_nats_start(th_servers_t *s)
{
    servers_cmd(s, "nats-start");
}

void
th_nats_pause(th_servers_t *s, int paused)
{
    if (s->env.nats_pid <= 0 || kill(s->env.nats_pid, paused ? SIGSTOP : SIGCONT) != 0) {
        fail_msg("cannot %s nats-server (pid %d)", paused ? "pause" : "resume", s->env.nats_pid);
    }
}

int
th_run(char *const argv[], char **out, int64_t timeout_ms)
{
    static int n;
    char path[256];
    FILE *f;
    long len;
    int st;
    pid_t p;

    snprintf(path, sizeof(path), "/tmp/outbox-run-%d-%d.out", (int)getpid(), ++n);
    unlink(path);
    p = th_spawn(argv, path);
    if (th_wait(p, timeout_ms, &st) != 1) {
        th_stop(p, 1000);
        unlink(path);
        fail_msg("%s did not end within %lld ms", argv[0], (long long)timeout_ms);
    }
    if (out != NULL) {
        f = fopen(path, "r");
        if (f == NULL) {
            fail_msg("cannot read the output of %s", argv[0]);
        }
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        rewind(f);
        *out = calloc(1, (size_t)len + 1);
        if (*out == NULL || fread(*out, 1, (size_t)len, f) != (size_t)len) {
            fail_msg("cannot read the output of %s", argv[0]);
        }
        fclose(f);
    }
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void
th_dump_file(const char *path, const char *title)
{
    char line[1024];
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        return;
    }
    fprintf(stderr, "---- %s %s ----\n", title, path);
    while (fgets(line, sizeof(line), f) != NULL) {
        fputs(line, stderr);
    }
    fclose(f);
}

int
th_file_has(const char *path, const char *needle)
{
    char line[1024];
    int found = 0;
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return 0;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}
