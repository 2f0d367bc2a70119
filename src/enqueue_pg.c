/*
 * Producer API: one INSERT into the outbox table inside the caller's open
 * transaction. The message is validated first, so an invalid one never
 * reaches the server and never aborts the caller's transaction. The id is
 * made here (libuuid) so the caller has it without a RETURNING round trip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uuid/uuid.h>

#include "pg_util.h"

#define BYTEAOID 17

/* Headers as a JSON object text; NULL on NOMEM. Names are unique and all
 * strings valid UTF-8 (validated), so jansson accepts them. */
static char *
headers_json(const outbox_message_t *msg)
{
    json_t *o, *v;
    char *s = NULL;
    size_t i;

    if ((o = json_object()) == NULL)
        return NULL;
    for (i = 0; i < msg->nheaders; i++) {
        v = json_string(msg->headers[i].value);
        if (v == NULL || json_object_set_new(o, msg->headers[i].name, v) != 0)
            goto done;
    }
    s = json_dumps(o, JSON_COMPACT);
done:
    json_decref(o);
    return s;
}

int
outbox_enqueue(struct pg_conn *conn, const char *schema, const char *table,
               const outbox_message_t *msg, char id_out[OUTBOX_ID_LEN + 1], char *err,
               size_t errlen)
{
    static const char fmt[] =
        "INSERT INTO %s (id, topic, msg_key, headers, body) VALUES ($1, $2, $3, $4, $5)";
    PGconn *c = (PGconn *)conn;
    outbox_pg_names_t n = {0};
    PGresult *res = NULL;
    char *sql = NULL, *hdrs = NULL;
    const char *values[5];
    int lengths[5] = {0}, formats[5] = {0, 0, 0, 0, 1};
    Oid types[5] = {0, 0, 0, 0, BYTEAOID};
    char id[OUTBOX_ID_LEN + 1];
    char e[512];
    uuid_t u;
    size_t len;
    int rc;

    e[0] = '\0';
    if ((rc = outbox_message_validate(msg, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    if (c == NULL || PQtransactionStatus(c) != PQTRANS_INTRANS) {
        rc = OUTBOX_ERR_INVALID;
        snprintf(e, sizeof(e), "no open transaction: call BEGIN first");
        goto done;
    }
    if ((rc = outbox_pg_names_init(&n, schema, table, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    len = sizeof(fmt) + strlen(n.qtable);
    hdrs = headers_json(msg);
    if ((sql = malloc(len)) == NULL || hdrs == NULL) {
        rc = OUTBOX_ERR_NOMEM;
        snprintf(e, sizeof(e), "enqueue: out of memory");
        goto done;
    }
    snprintf(sql, len, fmt, n.qtable);
    uuid_generate(u);
    uuid_unparse_lower(u, id);
    values[0] = id;
    values[1] = msg->topic;
    values[2] = msg->key != NULL && msg->key[0] != '\0' ? msg->key : NULL;
    values[3] = hdrs;
    /* A zero-length binary parameter must still be non-NULL. */
    values[4] = msg->body_len > 0 ? msg->body : "";
    if (msg->body_len > (size_t)0x3FFFFFFF) {
        rc = OUTBOX_ERR_INVALID;
        snprintf(e, sizeof(e), "body is larger than 1 GB");
        goto done;
    }
    lengths[4] = (int)msg->body_len;
    res = PQexecParams(c, sql, 5, types, values, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = outbox_pg_status(c, res);
        outbox_pg_error(e, sizeof(e), "enqueue", c, res);
        goto done;
    }
    memcpy(id_out, id, sizeof(id));
    rc = OUTBOX_OK;
done:
    PQclear(res);
    free(sql);
    free(hdrs);
    outbox_pg_names_free(&n);
    if (rc != OUTBOX_OK && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", e);
    return rc;
}
