/*
 * JetStream stream administration for `outboxd stream add|info`: a one-shot
 * connection (no reconnects), one JetStream API request, a clear one-line
 * error. The relay itself never creates streams: an operator decides their
 * subjects, storage and duplicate window.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nats_util.h"

#define DEFAULT_API_WAIT_MS 5000
#define MAX_SUBJECTS 64

typedef struct js_admin {
    natsConnection *nc;
    jsCtx *js;
    char url[512]; /* redacted */
} js_admin_t;

static void
admin_close(js_admin_t *a)
{
    jsCtx_Destroy(a->js);
    natsConnection_Destroy(a->nc);
    a->js = NULL;
    a->nc = NULL;
}

static int
admin_open(js_admin_t *a, const outbox_nats_options_t *opt, char *err, size_t errlen)
{
    jsOptions jo;
    natsStatus s;
    char why[200];
    int rc;

    memset(a, 0, sizeof(*a));
    outbox_nats_redact_url(opt->url, a->url, sizeof(a->url));
    rc = outbox_nats_connect(&a->nc, opt, false, err, errlen);
    if (rc != OUTBOX_OK)
        return rc;
    jsOptions_Init(&jo);
    jo.Wait = opt->publish_timeout_ms > 0 ? opt->publish_timeout_ms : DEFAULT_API_WAIT_MS;
    s = natsConnection_JetStream(&a->js, a->nc, &jo);
    if (s != NATS_OK) {
        outbox_nats_status_text(s, why, sizeof(why));
        snprintf(err, errlen, "JetStream context for '%s': %s", a->url, why);
        admin_close(a);
        return s == NATS_NO_MEMORY ? OUTBOX_ERR_NOMEM : OUTBOX_ERR_CONFIG;
    }
    return OUTBOX_OK;
}

/* Failures every JetStream API call shares (no JetStream, time-out, lost
 * connection); anything else is reported as permanent with cnats' text. */
static int
api_failure(const js_admin_t *a, natsStatus s, const char *what, char *err, size_t errlen)
{
    char why[200];

    outbox_nats_status_text(s, why, sizeof(why));
    switch (s) {
    case NATS_NO_RESPONDERS:
        snprintf(err, errlen, "%s: JetStream is not enabled on the NATS server at '%s'", what,
                 a->url);
        return OUTBOX_ERR_CONFIG;
    case NATS_TIMEOUT:
        snprintf(err, errlen, "%s: no JetStream reply from '%s' in time", what, a->url);
        return OUTBOX_ERR_TRANSIENT;
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_IO_ERROR:
    case NATS_STALE_CONNECTION:
        snprintf(err, errlen, "%s: lost the connection to '%s': %s", what, a->url, why);
        return OUTBOX_ERR_UNREACHABLE;
    case NATS_NO_MEMORY: snprintf(err, errlen, "%s: out of memory", what); return OUTBOX_ERR_NOMEM;
    default: snprintf(err, errlen, "%s: %s", what, why); return OUTBOX_ERR_PERMANENT;
    }
}

static void
join_subjects(const jsStreamConfig *c, char *out, size_t len)
{
    size_t o = 0;
    int i;

    out[0] = '\0';
    for (i = 0; c != NULL && i < c->SubjectsLen && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", c->Subjects[i]);
}

static int
stream_put(const outbox_nats_options_t *opt, const char *name, const char *subjects,
           int64_t duplicate_window_ms, bool update, char *err, size_t errlen)
{
    js_admin_t a = {0};
    jsStreamConfig cfg;
    jsStreamInfo *si = NULL, *old = NULL;
    jsErrCode jerr = 0;
    char *list = NULL, *subj[MAX_SUBJECTS];
    char what[300], have[512];
    natsStatus s;
    int nsubj, rc = OUTBOX_OK;

    if (name == NULL || name[0] == '\0' || strpbrk(name, ".*> \t\r\n") != NULL) {
        snprintf(err, errlen,
                 "invalid stream name '%s': must be non-empty, without '.', '*', "
                 "'>' or spaces",
                 name != NULL ? name : "");
        return OUTBOX_ERR_INVALID;
    }
    if (duplicate_window_ms < 0 || duplicate_window_ms > INT64_MAX / 1000000) {
        snprintf(err, errlen, "invalid duplicate window %" PRId64 " ms", duplicate_window_ms);
        return OUTBOX_ERR_INVALID;
    }
    if (subjects == NULL) {
        snprintf(err, errlen, "stream '%s': no subjects given", name);
        return OUTBOX_ERR_INVALID;
    }
    if ((list = strdup(subjects)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    nsubj = outbox_nats_split_list(list, subj, MAX_SUBJECTS);
    if (nsubj <= 0) {
        snprintf(err, errlen, "stream '%s': %s", name,
                 nsubj == 0 ? "no subjects given" : "more than 64 subjects");
        rc = OUTBOX_ERR_INVALID;
        goto done;
    }

    rc = admin_open(&a, opt, err, errlen);
    if (rc != OUTBOX_OK)
        goto done;

    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = (const char **)subj;
    cfg.SubjectsLen = nsubj;
    cfg.Storage = js_FileStorage;
    cfg.Duplicates = duplicate_window_ms * 1000000; /* ns; 0 = server default */

    /* Creating a stream that exists with the same configuration succeeds
     * (the API is idempotent); a different one is refused by the server. */
    if (update)
        s = js_UpdateStream(&si, a.js, &cfg, NULL, &jerr);
    else
        s = js_AddStream(&si, a.js, &cfg, NULL, &jerr);
    if (s == NATS_OK)
        goto done;
    snprintf(what, sizeof(what), "%s stream '%s'", update ? "update" : "add", name);
    if (jerr == JSStreamNameExistErr) {
        have[0] = '\0';
        if (js_GetStreamInfo(&old, a.js, name, NULL, NULL) == NATS_OK)
            join_subjects(old->Config, have, sizeof(have));
        snprintf(err, errlen,
                 "stream '%s' already exists with other settings (its subjects: %s, duplicate "
                 "window %llds); use `outboxd stream update %s SUBJECTS [--duplicate-window D]`",
                 name, have[0] ? have : "?",
                 old != NULL ? (long long)(old->Config->Duplicates / 1000000000) : 0LL, name);
        rc = OUTBOX_ERR_INVALID;
    } else if (jerr == JSStreamNotFoundErr) {
        snprintf(err, errlen, "no stream '%s' to update (create it with `outboxd stream add`)",
                 name);
        rc = OUTBOX_ERR_INVALID;
    } else if (jerr == JSStreamSubjectOverlapErr) {
        snprintf(err, errlen, "stream '%s': subjects '%s' overlap with those of another stream",
                 name, subjects);
        rc = OUTBOX_ERR_INVALID;
    } else if (jerr != 0) {
        char why[200];

        outbox_nats_status_text(s, why, sizeof(why));
        snprintf(err, errlen, "%s: %s (JetStream error %d)", what, why, (int)jerr);
        /* 10052: the server refused the settings (a bad subject, ...) */
        rc = jerr == JSStreamInvalidConfig ? OUTBOX_ERR_INVALID : OUTBOX_ERR_PERMANENT;
    } else {
        rc = api_failure(&a, s, what, err, errlen);
    }

done:
    jsStreamInfo_Destroy(si);
    jsStreamInfo_Destroy(old);
    admin_close(&a);
    free(list);
    return rc;
}

int
outbox_nats_stream_add(const outbox_nats_options_t *opt, const char *name, const char *subjects,
                       int64_t duplicate_window_ms, char *err, size_t errlen)
{
    return stream_put(opt, name, subjects, duplicate_window_ms, false, err, errlen);
}

int
outbox_nats_stream_update(const outbox_nats_options_t *opt, const char *name, const char *subjects,
                          int64_t duplicate_window_ms, char *err, size_t errlen)
{
    return stream_put(opt, name, subjects, duplicate_window_ms, true, err, errlen);
}

static const char *
storage_name(jsStorageType t)
{
    return t == js_MemoryStorage ? "memory" : "file";
}

static int
print_json(FILE *f, const jsStreamInfo *si)
{
    const jsStreamConfig *c = si->Config;
    json_t *o = NULL, *subs = NULL;
    int i, rc = -1;

    if ((subs = json_array()) == NULL)
        goto done;
    for (i = 0; i < c->SubjectsLen; i++)
        if (json_array_append_new(subs, json_string(c->Subjects[i])) != 0)
            goto done;
    o = json_pack("{s:s, s:O, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "name", c->Name, "subjects",
                  subs, "storage", storage_name(c->Storage), "messages", (json_int_t)si->State.Msgs,
                  "bytes", (json_int_t)si->State.Bytes, "first_seq", (json_int_t)si->State.FirstSeq,
                  "last_seq", (json_int_t)si->State.LastSeq, "duplicate_window_ms",
                  (json_int_t)(c->Duplicates / 1000000), "max_msg_size", (json_int_t)c->MaxMsgSize);
    if (o == NULL)
        goto done;
    if (json_dumpf(o, f, JSON_COMPACT) == 0 && fputc('\n', f) != EOF)
        rc = 0;
done:
    json_decref(o);
    json_decref(subs);
    return rc;
}

static int
print_text(FILE *f, const jsStreamInfo *si)
{
    const jsStreamConfig *c = si->Config;
    char subs[1024];

    join_subjects(c, subs, sizeof(subs));
    return fprintf(f,
                   "name: %s\nsubjects: %s\nstorage: %s\nmessages: %" PRIu64 "\nbytes: %" PRIu64
                   "\nfirst_seq: %" PRIu64 "\nlast_seq: %" PRIu64 "\nduplicate_window_ms: %" PRId64
                   "\nmax_msg_size: %" PRId32 "\n",
                   c->Name, subs, storage_name(c->Storage), si->State.Msgs, si->State.Bytes,
                   si->State.FirstSeq, si->State.LastSeq, c->Duplicates / 1000000,
                   c->MaxMsgSize) < 0
               ? -1
               : 0;
}

int
outbox_nats_stream_info(const outbox_nats_options_t *opt, const char *name, bool json,
                        void *out_file, char *err, size_t errlen)
{
    FILE *f = out_file != NULL ? out_file : stdout;
    js_admin_t a = {0};
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    char what[300];
    int rc;

    if (name == NULL || name[0] == '\0') {
        snprintf(err, errlen, "no stream name given");
        return OUTBOX_ERR_INVALID;
    }
    rc = admin_open(&a, opt, err, errlen);
    if (rc != OUTBOX_OK)
        goto done;

    s = js_GetStreamInfo(&si, a.js, name, NULL, &jerr);
    if (s != NATS_OK) {
        snprintf(what, sizeof(what), "stream info '%s'", name);
        if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
            snprintf(err, errlen, "stream '%s' not found", name);
            rc = OUTBOX_ERR_PERMANENT;
        } else {
            rc = api_failure(&a, s, what, err, errlen);
        }
        goto done;
    }
    if ((json ? print_json(f, si) : print_text(f, si)) != 0 || fflush(f) != 0) {
        snprintf(err, errlen, "cannot write stream info: %s", strerror(errno));
        rc = OUTBOX_ERR_TRANSIENT;
    }

done:
    jsStreamInfo_Destroy(si);
    admin_close(&a);
    return rc;
}
