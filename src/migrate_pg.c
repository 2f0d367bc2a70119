/*
 * Schema migrations for one outbox table. Versions are applied in order,
 * each in its own transaction that first takes a transaction-level advisory
 * lock keyed on the schema, so concurrent `outboxd migrate` runs queue up
 * and the later ones find nothing to do. <table>_migrations records what
 * is applied; a version is never edited once released, only added.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_util.h"

/*
 * Migration templates. @table@ is the quoted, qualified table, @schema@ the
 * quoted schema, @q:SUFFIX@ the qualified name "<table>SUFFIX" and
 * @n:SUFFIX@ its bare quoted name (indexes, constraints), @lq:SUFFIX@ the
 * qualified name as a string literal.
 *
 * <table>_invalid() is the server copy of outbox_message_validate()
 * (src/validate.c): it returns why a message is invalid, or NULL. It backs
 * both a CHECK constraint (so even raw INSERTs are checked) and the clear
 * errors of <table>_enqueue(). Lengths are bytes, as in C.
 *
 * The pending index (seq) WHERE state = 0 keeps the claim an index scan
 * over pending rows however many delivered ones accumulate; locked_by and
 * locked_on appear in no index, so the claim's UPDATE can be HOT, and the
 * fillfactor leaves each page the room a HOT update needs.
 */
/* Version 1's full check (<table>_invalid_why() since version 2). */
#define FN_INVALID_FULL(verb, name)                                                                \
    verb                                                                                           \
        " " name "(p_topic text, p_key text, p_headers jsonb)\n"                                   \
        "RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE\n"                                  \
        "SET search_path = pg_catalog, pg_temp AS $fn$\n"                                          \
        "DECLARE\n"                                                                                \
        "  tok text;\n"                                                                            \
        "  h record;\n"                                                                            \
        "  v text;\n"                                                                              \
        "BEGIN\n"                                                                                  \
        "  IF p_topic IS NULL OR p_topic = '' THEN RETURN 'topic is empty'; END IF;\n"             \
        "  IF octet_length(p_topic) > 1024 THEN RETURN 'topic is longer than 1024 bytes'; END "    \
        "IF;\n"                                                                                    \
        "  IF p_topic ~ E'[\\\\x01-\\\\x20\\\\x7f]' THEN\n"                                        \
        "    RETURN format('topic %L contains a space or control character', p_topic);\n"          \
        "  END IF;\n"                                                                              \
        "  FOREACH tok IN ARRAY string_to_array(p_topic, '.') LOOP\n"                              \
        "    IF tok = '' THEN RETURN format('topic %L has an empty token', p_topic); END IF;\n"    \
        "    IF tok IN ('*', '>') THEN RETURN format('topic %L has a wildcard token', p_topic); "  \
        "END "                                                                                     \
        "IF;\n"                                                                                    \
        "  END LOOP;\n"                                                                            \
        "  IF p_key IS NOT NULL THEN\n"                                                            \
        "    IF octet_length(p_key) > 4096 THEN RETURN 'key is longer than 4096 bytes'; END IF;\n" \
        "    IF p_key ~ E'[\\\\r\\\\n]' THEN RETURN format('key %L contains CR or LF', p_key); "   \
        "END "                                                                                     \
        "IF;\n"                                                                                    \
        "    IF p_key ~ E'^[ \\\\t]|[ \\\\t]$' THEN\n"                                             \
        "      RETURN format('key %L begins or ends with white space (NATS clients trim it)', "    \
        "p_key);\n"                                                                                \
        "    END IF;\n"                                                                            \
        "  END IF;\n"                                                                              \
        "  IF p_headers IS NULL THEN RETURN 'headers are NULL'; END IF;\n"                         \
        "  IF jsonb_typeof(p_headers) <> 'object' THEN\n"                                          \
        "    RETURN 'headers must be a JSON object of string values';\n"                           \
        "  END IF;\n"                                                                              \
        "  FOR h IN SELECT key, value FROM jsonb_each(p_headers) LOOP\n"                           \
        "    IF h.key = '' THEN RETURN 'header name is empty'; END IF;\n"                          \
        "    IF octet_length(h.key) > 256 THEN RETURN 'header name is longer than 256 bytes'; "    \
        "END IF;\n"                                                                                \
        "    IF h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN\n"                                  \
        "      RETURN format('header name %L is not a token', h.key);\n"                           \
        "    END IF;\n"                                                                            \
        "    IF lower(left(h.key, 7)) = 'outbox-' OR lower(left(h.key, 5)) = 'nats-' THEN\n"       \
        "      RETURN format('header name %L is reserved (Outbox-*, Nats-*)', h.key);\n"           \
        "    END IF;\n"                                                                            \
        "    IF jsonb_typeof(h.value) <> 'string' THEN\n"                                          \
        "      RETURN format('header %L value is not a string', h.key);\n"                         \
        "    END IF;\n"                                                                            \
        "    v := h.value #>> '{}';\n"                                                             \
        "    IF octet_length(v) > 4096 THEN\n"                                                     \
        "      RETURN format('header %L value is longer than 4096 bytes', h.key);\n"               \
        "    END IF;\n"                                                                            \
        "    IF v ~ E'[\\\\r\\\\n]' THEN RETURN format('header %L value contains CR or LF', "      \
        "h.key); "                                                                                 \
        "END IF;\n"                                                                                \
        "    IF v = '' THEN\n"                                                                     \
        "      RETURN format('header %L value is empty (NATS readers would lose every header of "  \
        "the "                                                                                     \
        "message)', h.key);\n"                                                                     \
        "    END IF;\n"                                                                            \
        "    IF v ~ E'^[ \\\\t]|[ \\\\t]$' THEN\n"                                                 \
        "      RETURN format('header %L value begins or ends with white space (NATS clients trim " \
        "it)', h.key);\n"                                                                          \
        "    END IF;\n"                                                                            \
        "  END LOOP;\n"                                                                            \
        "  RETURN NULL;\n"                                                                         \
        "END $fn$;\n"

static const char migration1[] = FN_INVALID_FULL(
    "CREATE FUNCTION",
    "@q:_invalid@") "\n"
                    "CREATE TABLE @table@ (\n"
                    "  id uuid PRIMARY KEY,\n"
                    "  seq bigint GENERATED ALWAYS AS IDENTITY,\n"
                    "  topic text NOT NULL,\n"
                    "  msg_key text,\n"
                    "  headers jsonb NOT NULL DEFAULT '{}',\n"
                    "  body bytea NOT NULL,\n"
                    "  state smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),\n"
                    "  created_on timestamptz NOT NULL DEFAULT now(),\n"
                    "  locked_by text,\n"
                    "  locked_on timestamptz,\n"
                    "  processed_on timestamptz,\n"
                    "  attempts integer NOT NULL DEFAULT 0,\n"
                    "  last_attempt_on timestamptz,\n"
                    "  last_error text,\n"
                    "  next_attempt_at timestamptz NOT NULL DEFAULT now(),\n"
                    "  CONSTRAINT @n:_valid@ CHECK (@q:_invalid@(topic, msg_key, headers) IS "
                    "NULL)\n"
                    ") WITH (fillfactor = 85);\n"
                    "CREATE INDEX @n:_pending@ ON @table@ (seq) WHERE state = 0;\n"
                    "CREATE INDEX @n:_done@ ON @table@ (state, processed_on) WHERE state <> 0;\n"
                    "\n"
                    "CREATE FUNCTION @q:_enqueue@(topic text, key text, headers jsonb, body "
                    "bytea)\n"
                    "RETURNS uuid LANGUAGE plpgsql VOLATILE\n"
                    "SET search_path = pg_catalog, pg_temp AS $fn$\n"
                    "DECLARE\n"
                    "  new_id uuid := gen_random_uuid();\n"
                    "  problem text;\n"
                    "BEGIN\n"
                    "  IF $4 IS NULL THEN\n"
                    "    RAISE EXCEPTION 'outbox: body is NULL' USING ERRCODE = "
                    "'null_value_not_allowed';\n"
                    "  END IF;\n"
                    "  problem := @q:_invalid@($1, NULLIF($2, ''), coalesce($3, '{}'));\n"
                    "  IF problem IS NOT NULL THEN\n"
                    "    RAISE EXCEPTION 'outbox: %', problem USING ERRCODE = "
                    "'invalid_parameter_value';\n"
                    "  END IF;\n"
                    "  INSERT INTO @table@ (id, topic, msg_key, headers, body)\n"
                    "  VALUES (new_id, $1, NULLIF($2, ''), coalesce($3, '{}'), $4);\n"
                    "  RETURN new_id;\n"
                    "END $fn$;\n";

/*
 * Version 2: delivery semantics and the producer path.
 * - crashes: how often a worker died holding the row (counted by the
 *   keeper); a row with crashes > 0 is a suspect, claimed alone, and parked
 *   as dead at the crash limit.
 * - <table>_key_pending: the per-key ordering claim checks that it holds a
 *   whole prefix of each key's pending rows; partial, so it costs only
 *   keyed pending rows and the claim's UPDATE stays HOT.
 * - <table>_guard(), a BEFORE INSERT OR UPDATE OF topic, msg_key, headers
 *   row trigger, replaces version 1's CHECK constraint: a CHECK runs on
 *   every UPDATE, so each claim and mark paid for validating the message
 *   again; the trigger validates only what changes (same rule, SQLSTATE
 *   23514, "outbox: <why>"), and <table>_enqueue() no longer validates a
 *   second time.
 * - seq becomes GENERATED BY DEFAULT, so that `outboxd dead requeue` can
 *   give requeued records new seqs in their old order.
 * - <table>_invalid() gets a fast path: one pass of a few regular
 *   expressions accepts the common valid message; anything else goes to
 *   version 1's function (renamed <table>_invalid_why()) for the reason.
 *   The fast path only accepts what the full check accepts.
 * - <table>_escaped(): the reason with control characters escaped (\n,
 *   \x01), as validate.c shows them: a reason quotes the culprit, and a raw
 *   newline from a key would break the error line in two.
 * - Wake-up: <table>_idle is a sequence used as a flag, the number of idle
 *   relay workers registered in <table>_listeners (unlogged; they LISTEN).
 *   The guard notifies only while it is above zero: reading it is one
 *   function call, and NOTIFY (a cluster-wide lock held through commit)
 *   happens only when a relay is idle, never while it is busy.
 * @channel@ is derived from schema and table (outbox_pg_channel()).
 */
/* The common valid message, recognized in one expression (no loop, one
 * small query over the headers); anything else is decided, with its
 * reason, by version 1's full check. Never accepts what that rejects. */
#define FAST_VALID(t, k, h)                                                                        \
    t " ~ '^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$' AND octet_length(" t ") <= 1024\n"                \
      "  AND (" k " IS NULL OR (octet_length(" k ") <= 4096\n"                                     \
      "       AND " k " ~ E'^[^ \\t\\r\\n]([^\\r\\n]*[^ \\t\\r\\n])?$'))\n"                        \
      "  AND (" h " = '{}' OR (jsonb_typeof(" h ") = 'object' AND NOT EXISTS (\n"                  \
      "    SELECT 1 FROM jsonb_each(" h ") x WHERE NOT (\n"                                        \
      "      x.key ~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' AND octet_length(x.key) <= 256\n"            \
      "      AND lower(left(x.key, 7)) <> 'outbox-' AND lower(left(x.key, 5)) <> 'nats-'\n"        \
      "      AND jsonb_typeof(x.value) = 'string' AND octet_length(x.value #>> '{}') <= 4096\n"    \
      "      AND (x.value #>> '{}') ~ E'^[^ \\t\\r\\n]([^\\r\\n]*[^ \\t\\r\\n])?$'))))"

/* The objects of version 2 that are not the table, as statements that
 * create them: verb is "CREATE" in the migration, "CREATE OR REPLACE" (or
 * IF NOT EXISTS) in the repair script, which restores them as they are. */
#define FN_ESCAPED(verb)                                                                           \
    verb " FUNCTION @q:_escaped@(s text)\n"                                                        \
         "RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE\n"                                 \
         "SET search_path = pg_catalog, pg_temp AS $fn$\n"                                         \
         "DECLARE\n"                                                                               \
         "  c text;\n"                                                                             \
         "BEGIN\n"                                                                                 \
         "  FOR c IN SELECT DISTINCT m[1] FROM regexp_matches(s, E'[\\\\x01-\\\\x1f\\\\x7f]', "    \
         "'g') m LOOP\n"                                                                           \
         "    s := replace(s, c, CASE c WHEN E'\\n' THEN E'\\\\n' WHEN E'\\r' THEN E'\\\\r'\n"     \
         "      WHEN E'\\t' THEN E'\\\\t' ELSE E'\\\\x' || lpad(to_hex(ascii(c)), 2, '0') END);\n" \
         "  END LOOP;\n"                                                                           \
         "  RETURN s;\n"                                                                           \
         "END $fn$;\n"
#define FN_INVALID(verb)                                                                           \
    verb " FUNCTION @q:_invalid@(p_topic text, p_key text, p_headers jsonb)\n"                     \
         "RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE\n"                                 \
         "SET search_path = pg_catalog, pg_temp AS $fn$\n"                                         \
         "BEGIN\n"                                                                                 \
         "  IF " FAST_VALID(                                                                       \
             "p_topic", "p_key",                                                                   \
             "p_headers") "\n"                                                                     \
                          "  THEN\n"                                                               \
                          "    RETURN NULL;\n"                                                     \
                          "  END IF;\n"                                                            \
                          "  RETURN @q:_escaped@(@q:_invalid_why@(p_topic, p_key, p_headers));\n"  \
                          "END $fn$;\n"
#define KEY_INDEX(verb)                                                                            \
    verb " @n:_key_pending@ ON @table@ (msg_key, seq)\n"                                           \
         "  WHERE state = 0 AND msg_key IS NOT NULL;\n"
#define LISTENERS(verb)                                                                            \
    verb " @q:_listeners@ (\n"                                                                     \
         "  lock_id text PRIMARY KEY,\n"                                                           \
         "  backend_pid integer NOT NULL DEFAULT pg_backend_pid(),\n"                              \
         "  since timestamptz NOT NULL DEFAULT now()\n"                                            \
         ");\n"
#define IDLE_SEQUENCE(verb) verb " @q:_idle@ MINVALUE 0 START 0 NO CYCLE;\n"
#define FN_GUARD(verb)                                                                             \
    verb " FUNCTION @q:_guard@() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER\n"              \
         "SET search_path = pg_catalog, pg_temp AS $fn$\n"                                         \
         "DECLARE\n"                                                                               \
         "  problem text;\n"                                                                       \
         "BEGIN\n"                                                                                 \
         "  NEW.msg_key := NULLIF(NEW.msg_key, ''); /* '' is no key, for ordering too */\n"        \
         "  IF TG_OP = 'INSERT' OR NEW.topic IS DISTINCT FROM OLD.topic\n"                         \
         "     OR NEW.msg_key IS DISTINCT FROM OLD.msg_key OR NEW.headers IS DISTINCT FROM "       \
         "OLD.headers\n"                                                                           \
         "  THEN\n"                                                                                \
         "    IF " FAST_VALID("NEW.topic", "NEW.msg_key",                                          \
                              "NEW.headers") " THEN\n"                                             \
                                             "      problem := NULL;\n"                            \
                                             "    ELSIF left(NEW.topic, 1) = '$' THEN\n"           \
                                             "      problem := format('topic %L begins with $ "    \
                                             "(reserved for NATS system and "                      \
                                             "JetStream '\n"                                       \
                                             "        'API subjects)', NEW.topic);\n"              \
                                             "    ELSE\n"                                          \
                                             "      problem := @q:_invalid_why@(NEW.topic, "       \
                                             "NEW.msg_key, NEW.headers);\n"                        \
                                             "    END IF;\n"                                       \
                                             "    IF problem IS NOT NULL THEN\n"                   \
                                             "      RAISE EXCEPTION 'outbox: %', "                 \
                                             "@q:_escaped@(problem) USING ERRCODE = "              \
                                             "'check_violation';\n"                                \
                                             "    END IF;\n"                                       \
                                             "  END IF;\n"                                         \
                                             "  IF TG_OP = 'INSERT' AND "                          \
                                             "pg_sequence_last_value(@lq:_idle@) > 0 THEN\n"       \
                                             "    PERFORM pg_notify('@channel@', '');\n"           \
                                             "  END IF;\n"                                         \
                                             "  RETURN NEW;\n"                                     \
                                             "END $fn$;\n"
#define GUARD_TRIGGER                                                                              \
    "CREATE TRIGGER @n:_guard@ BEFORE INSERT OR UPDATE OF topic, msg_key, headers ON @table@\n"    \
    "  FOR EACH ROW EXECUTE FUNCTION @q:_guard@();\n"
#define FN_ENQUEUE                                                                                 \
    "CREATE OR REPLACE FUNCTION @q:_enqueue@(topic text, key text, headers jsonb, body bytea)\n"   \
    "RETURNS uuid LANGUAGE plpgsql VOLATILE\n"                                                     \
    "SET search_path = pg_catalog, pg_temp AS $fn$\n"                                              \
    "DECLARE\n"                                                                                    \
    "  new_id uuid := gen_random_uuid();\n"                                                        \
    "BEGIN\n"                                                                                      \
    "  IF $4 IS NULL THEN\n"                                                                       \
    "    RAISE EXCEPTION 'outbox: body is NULL' USING ERRCODE = 'null_value_not_allowed';\n"       \
    "  END IF;\n"                                                                                  \
    "  INSERT INTO @table@ (id, topic, msg_key, headers, body)\n"                                  \
    "  VALUES (new_id, $1, NULLIF($2, ''), coalesce($3, '{}'), $4);\n"                             \
    "  RETURN new_id;\n"                                                                           \
    "END $fn$;\n"

static const char migration2[] =
    "ALTER FUNCTION @q:_invalid@(text, text, jsonb) RENAME TO @n:_invalid_why@;\n" FN_ESCAPED(
        "CREATE") FN_INVALID("CREATE") "ALTER TABLE @table@ ADD COLUMN crashes integer NOT NULL "
                                       "DEFAULT 0,\n"
                                       "  ALTER COLUMN id SET DEFAULT gen_random_uuid(),\n"
                                       "  ALTER COLUMN seq SET GENERATED BY DEFAULT;\n" KEY_INDEX(
                                           "CREATE INDEX") LISTENERS("CREATE UNLOGGED TABLE")
                                           IDLE_SEQUENCE("CREATE SEQUENCE") FN_GUARD("CREATE")
                                               GUARD_TRIGGER
    "ALTER TABLE @table@ DROP CONSTRAINT @n:_valid@;\n" FN_ENQUEUE;

/*
 * `outboxd migrate --repair`: every object of the latest version beside
 * the table, created again where it is missing (or disabled: the trigger)
 * and left as it is where it is there; the versions recorded. For a table
 * whose objects were dropped by hand. The table and its rows are never
 * touched.
 */
static const char repair_sql[] = FN_INVALID_FULL("CREATE OR REPLACE FUNCTION", "@q:_invalid_why@")
    FN_ESCAPED("CREATE OR REPLACE") FN_INVALID(
        "CREATE OR REPLACE") "CREATE INDEX IF NOT EXISTS @n:_pending@ ON @table@ (seq) WHERE state "
                             "= 0;\n"
                             "CREATE INDEX IF NOT EXISTS @n:_done@ ON @table@ (state, "
                             "processed_on) WHERE state <> 0;\n" KEY_INDEX(
                                 "CREATE INDEX IF NOT EXISTS")
                                 LISTENERS("CREATE UNLOGGED TABLE IF NOT EXISTS")
                                     IDLE_SEQUENCE("CREATE SEQUENCE IF NOT EXISTS") FN_GUARD(
                                         "CREATE OR REPLACE") "DROP TRIGGER IF EXISTS @n:_guard@ "
                                                              "ON @table@;\n" GUARD_TRIGGER
                                                                  FN_ENQUEUE;

static const struct {
    int version;
    const char *description;
    const char *sql;
} migrations[] = {
    {1, "outbox table, indexes, validation and enqueue functions", migration1},
    {2, "crash counts, per-key pending index, validation trigger, wake-up flag and listeners",
     migration2},
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* Growable string. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int nomem;
} sbuf_t;

static void
sb_addn(sbuf_t *b, const char *s, size_t n)
{
    char *np;
    size_t ncap;

    if (b->nomem)
        return;
    if (b->len + n + 1 > b->cap) {
        ncap = b->cap ? b->cap : 4096;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        if ((np = realloc(b->p, ncap)) == NULL) {
            b->nomem = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
sb_add(sbuf_t *b, const char *s)
{
    if (s == NULL)
        b->nomem = 1;
    else
        sb_addn(b, s, strlen(s));
}

/* Append tmpl with its @...@ placeholders replaced (see above). */
static void
expand(sbuf_t *b, const outbox_pg_names_t *n, const char *tmpl)
{
    const char *p = tmpl, *at, *end;
    char key[64];
    char *name;

    while ((at = strchr(p, '@')) != NULL) {
        sb_addn(b, p, (size_t)(at - p));
        end = strchr(at + 1, '@');
        if (end == NULL || (size_t)(end - at - 1) >= sizeof(key)) {
            b->nomem = 1; /* a template bug; caught by the tests */
            return;
        }
        memcpy(key, at + 1, (size_t)(end - at - 1));
        key[end - at - 1] = '\0';
        if (strcmp(key, "table") == 0) {
            sb_add(b, n->qtable);
        } else if (strcmp(key, "channel") == 0) {
            char ch[OUTBOX_PG_CHANNEL_LEN + 1];

            outbox_pg_channel(n->schema, n->table, ch);
            sb_add(b, ch);
        } else if (strcmp(key, "schema") == 0) {
            sb_add(b, n->qschema);
        } else if (strncmp(key, "q:", 2) == 0 || strncmp(key, "n:", 2) == 0) {
            name = outbox_pg_qualify(key[0] == 'q' ? n->schema : NULL, n->table, key + 2);
            sb_add(b, name);
            free(name);
        } else if (strncmp(key, "lq:", 3) == 0) {
            /* the qualified name as a string literal ('' and \\ doubled) */
            const char *c;

            if ((name = outbox_pg_qualify(n->schema, n->table, key + 3)) == NULL) {
                b->nomem = 1;
                return;
            }
            sb_add(b, strchr(name, '\\') != NULL ? "E'" : "'");
            for (c = name; *c != '\0'; c++) {
                if (*c == '\'' || (*c == '\\' && strchr(name, '\\') != NULL))
                    sb_addn(b, c, 1);
                sb_addn(b, c, 1);
            }
            sb_add(b, "'");
            free(name);
        } else {
            b->nomem = 1;
            return;
        }
        p = end + 1;
    }
    sb_add(b, p);
}

/* 'text' as an SQL literal that reads the same whatever
 * standard_conforming_strings says. */
static void
add_literal(sbuf_t *b, const char *s)
{
    sb_add(b, "E'");
    for (; *s != '\0'; s++) {
        if (*s == '\'' || *s == '\\')
            sb_addn(b, s, 1);
        sb_addn(b, s, 1);
    }
    sb_add(b, "'");
}

/* Text the advisory lock key is hashed from; the same in both paths. Per
 * schema, not per table: migrations of two tables in one schema would
 * otherwise race to create the schema. */
static void
add_lock_key(sbuf_t *b, const outbox_pg_names_t *n)
{
    sb_add(b, "outbox migrate ");
    sb_add(b, n->qschema);
}

static const char migrations_table[] = "CREATE TABLE IF NOT EXISTS @q:_migrations@ (\n"
                                       "  version integer PRIMARY KEY,\n"
                                       "  description text NOT NULL,\n"
                                       "  applied_on timestamptz NOT NULL DEFAULT now()\n"
                                       ");\n";

int
outbox_pg_migration_sql(const char *schema, const char *table, int version, char **sql_out)
{
    outbox_pg_names_t n;
    sbuf_t b = {0}, key = {0};
    char err[128], num[16];
    int rc;

    if (version < 1 || version > NMIGRATIONS)
        return OUTBOX_ERR_CONFIG;
    if ((rc = outbox_pg_names_init(&n, schema, table, err, sizeof(err))) != OUTBOX_OK)
        return rc;
    snprintf(num, sizeof(num), "%d", version);
    add_lock_key(&key, &n);
    sb_add(&b, "-- outbox schema migration ");
    sb_add(&b, num);
    sb_add(&b, " for ");
    sb_add(&b, n.qtable);
    sb_add(&b, ": ");
    sb_add(&b, migrations[version - 1].description);
    sb_add(&b, "\nBEGIN;\nSELECT pg_advisory_xact_lock(hashtextextended(");
    add_literal(&b, key.nomem ? "" : key.p);
    sb_add(&b, ", 0));\nCREATE SCHEMA IF NOT EXISTS ");
    sb_add(&b, n.qschema);
    sb_add(&b, ";\n");
    expand(&b, &n, migrations_table);
    sb_add(&b, "\n");
    expand(&b, &n, migrations[version - 1].sql);
    sb_add(&b, "\nINSERT INTO ");
    sb_add(&b, n.qmigrations);
    sb_add(&b, " (version, description) VALUES (");
    sb_add(&b, num);
    sb_add(&b, ", ");
    add_literal(&b, migrations[version - 1].description);
    sb_add(&b, ");\nCOMMIT;\n");
    outbox_pg_names_free(&n);
    if (b.nomem || key.nomem) {
        free(b.p);
        free(key.p);
        return OUTBOX_ERR_NOMEM;
    }
    free(key.p);
    *sql_out = b.p;
    return OUTBOX_OK;
}

/* Run sql (no parameters unless nparams > 0), expecting success. */
static int
run(PGconn *c, const char *what, const char *sql, int nparams, const char *const *params,
    PGresult **res_out, char *err, size_t errlen)
{
    PGresult *res;
    ExecStatusType st;
    int rc;

    if (nparams > 0)
        res = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    else
        res = PQexec(c, sql);
    st = PQresultStatus(res);
    if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)) {
        rc = outbox_pg_status(c, res);
        outbox_pg_error(err, errlen, what, c, res);
        PQclear(res);
        return rc;
    }
    if (res_out != NULL)
        *res_out = res;
    else
        PQclear(res);
    return OUTBOX_OK;
}

/* Apply migration index i unless already there; *applied = 1 if it ran.
 * One transaction; the caller rolls back on failure. */
static int
apply_one(PGconn *c, const outbox_pg_names_t *n, int i, int *applied, char *err, size_t errlen)
{
    sbuf_t b = {0}, key = {0};
    PGresult *res = NULL;
    const char *params[2];
    char num[16];
    int rc;

    *applied = 0;
    snprintf(num, sizeof(num), "%d", migrations[i].version);
    add_lock_key(&key, n);
    if (key.nomem) {
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    if ((rc = run(c, "begin", "BEGIN", 0, NULL, NULL, err, errlen)) != OUTBOX_OK)
        goto done;
    params[0] = key.p;
    if ((rc = run(c, "migration lock", "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", 1,
                  params, NULL, err, errlen)) != OUTBOX_OK)
        goto done;
    /* CREATE SCHEMA IF NOT EXISTS still needs the CREATE privilege on the
     * database, so only try when the schema is really missing. */
    params[0] = n->schema;
    if ((rc = run(c, "schema lookup", "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, params,
                  &res, err, errlen)) != OUTBOX_OK)
        goto done;
    if (PQntuples(res) == 0) {
        expand(&b, n, "CREATE SCHEMA @schema@;\n");
    }
    PQclear(res);
    res = NULL;
    expand(&b, n, migrations_table);
    if (b.nomem) {
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    if ((rc = run(c, "create migrations table", b.p, 0, NULL, NULL, err, errlen)) != OUTBOX_OK)
        goto done;
    free(b.p);
    b = (sbuf_t){0};
    expand(&b, n, "SELECT 1 FROM @q:_migrations@ WHERE version = $1");
    params[0] = num;
    if (b.nomem) {
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    if ((rc = run(c, "read migrations", b.p, 1, params, &res, err, errlen)) != OUTBOX_OK)
        goto done;
    if (PQntuples(res) == 0) {
        free(b.p);
        b = (sbuf_t){0};
        expand(&b, n, migrations[i].sql);
        if (b.nomem) {
            rc = OUTBOX_ERR_NOMEM;
            goto done;
        }
        if ((rc = run(c, "migration", b.p, 0, NULL, NULL, err, errlen)) != OUTBOX_OK)
            goto done;
        free(b.p);
        b = (sbuf_t){0};
        expand(&b, n, "INSERT INTO @q:_migrations@ (version, description) VALUES ($1, $2)");
        params[1] = migrations[i].description;
        if (b.nomem) {
            rc = OUTBOX_ERR_NOMEM;
            goto done;
        }
        if ((rc = run(c, "record migration", b.p, 2, params, NULL, err, errlen)) != OUTBOX_OK)
            goto done;
        *applied = 1;
    }
    rc = run(c, "commit", "COMMIT", 0, NULL, NULL, err, errlen);
done:
    PQclear(res);
    free(b.p);
    free(key.p);
    return rc;
}

/* Every object the migrations leave beside the table (whose DROP takes its
 * indexes and trigger along): dropped, with <table>_migrations, to
 * reinstall. IF EXISTS: an older version has fewer. */
static const char leftovers[] =
    "DROP TABLE IF EXISTS @q:_migrations@, @q:_listeners@; DROP SEQUENCE IF EXISTS @q:_idle@; "
    "DROP FUNCTION IF EXISTS @q:_enqueue@, @q:_invalid@, @q:_invalid_why@, @q:_escaped@, "
    "@q:_guard@;";

/* The relations and functions of the latest version beside the table and
 * <table>_migrations, as to_regclass()/to_regprocedure() arguments. */
static const char *const objects_rel[] = {"@q:_listeners@", "@q:_idle@", "@schema@.@n:_pending@",
                                          "@schema@.@n:_done@", "@schema@.@n:_key_pending@"};
static const char *const objects_fn[] = {
    "@q:_enqueue@(text, text, jsonb, bytea)", "@q:_invalid@(text, text, jsonb)",
    "@q:_invalid_why@(text, text, jsonb)", "@q:_escaped@(text)", "@q:_guard@()"};
#define NRELS (sizeof(objects_rel) / sizeof(objects_rel[0]))
#define NFNS (sizeof(objects_fn) / sizeof(objects_fn[0]))
#define NOBJECTS (NRELS + NFNS)

/* What is installed of the latest version, read in one query. */
typedef struct installed {
    bool recorded; /* <table>_migrations exists */
    bool table;
    int ncolumns;      /* of the latest version's columns, the table has */
    char columns[512]; /* those it lacks */
    char trigger;      /* pg_trigger.tgenabled of the guard, '-' when missing */
    int version;       /* recorded, 0 if none */
    int nversions;     /* rows recorded: fewer than version when some were deleted */
    int nmissing;      /* of objects_rel and objects_fn */
    char missing[4096];
} installed_t;

/* The table's columns at the latest version. */
static const char table_columns[] =
    "[\"id\", \"seq\", \"topic\", \"msg_key\", \"headers\", \"body\", \"state\", "
    "\"created_on\", \"locked_by\", \"locked_on\", \"processed_on\", \"attempts\", "
    "\"last_attempt_on\", \"last_error\", \"next_attempt_at\", \"crashes\"]";
#define NCOLUMNS 16

/* The templates, expanded, as a JSON array of strings: any character of a
 * quoted name is safe in it. */
static void
json_names(sbuf_t *to, const outbox_pg_names_t *n, const char *const *tmpl, size_t count)
{
    size_t i;

    sb_add(to, "[");
    for (i = 0; i < count; i++) {
        sbuf_t one = {0};
        const char *q;

        expand(&one, n, tmpl[i]);
        sb_add(to, i > 0 ? ",\"" : "\"");
        for (q = one.p; q != NULL && *q != '\0'; q++) {
            if (*q == '"' || *q == '\\')
                sb_add(to, "\\");
            sb_addn(to, q, 1);
        }
        sb_add(to, "\"");
        to->nomem |= one.nomem;
        free(one.p);
    }
    sb_add(to, "]");
}

static int
read_installed(PGconn *c, const outbox_pg_names_t *n, installed_t *in, char *err, size_t errlen)
{
    sbuf_t b = {0}, tg = {0}, gfn = {0}, rels = {0}, fns = {0};
    PGresult *res = NULL;
    const char *params[7];
    int rc;

    memset(in, 0, sizeof(*in));
    json_names(&rels, n, objects_rel, NRELS);
    json_names(&fns, n, objects_fn, NFNS);
    expand(&tg, n, "@n:_guard@");
    expand(&gfn, n, "@q:_guard@()");
    if (rels.nomem || fns.nomem || tg.nomem || gfn.nomem) {
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    params[0] = n->qmigrations;
    params[1] = n->qtable;
    params[2] = tg.p;
    params[3] = rels.p;
    params[4] = fns.p;
    params[5] = table_columns;
    params[6] = gfn.p;
    if ((rc = run(c, "schema check",
                  "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,"
                  " array_to_string(cols, ', '), cardinality(cols),"
                  /* the guard: BEFORE INSERT OR UPDATE, FOR EACH ROW (tgtype 23),
                   * calling <table>_guard(); any other trigger of its name is 'X' */
                  " coalesce((SELECT CASE WHEN tgfoid = to_regprocedure($7) AND tgtype = 23"
                  " THEN tgenabled::text ELSE 'X' END FROM pg_trigger WHERE tgrelid ="
                  " to_regclass($2) AND '\"' || replace(tgname, '\"', '\"\"') || '\"' = $3), '-'),"
                  " array_to_string(m, ', '), cardinality(m) FROM (SELECT"
                  " ARRAY(SELECT o FROM jsonb_array_elements_text($4::jsonb) o"
                  " WHERE to_regclass(o) IS NULL) || ARRAY(SELECT o FROM"
                  " jsonb_array_elements_text($5::jsonb) o WHERE to_regprocedure(o) IS NULL)"
                  " AS m, ARRAY(SELECT a FROM jsonb_array_elements_text($6::jsonb) a"
                  " WHERE NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="
                  " to_regclass($2) AND attname = a AND NOT attisdropped)) AS cols) x",
                  7, params, &res, err, errlen)) != OUTBOX_OK)
        goto done;
    in->recorded = PQgetvalue(res, 0, 0)[0] == 't';
    in->table = PQgetvalue(res, 0, 1)[0] == 't';
    snprintf(in->columns, sizeof(in->columns), "%s", PQgetvalue(res, 0, 2));
    in->ncolumns = NCOLUMNS - atoi(PQgetvalue(res, 0, 3));
    in->trigger = PQgetvalue(res, 0, 4)[0];
    snprintf(in->missing, sizeof(in->missing), "%s", PQgetvalue(res, 0, 5));
    in->nmissing = atoi(PQgetvalue(res, 0, 6));
    PQclear(res);
    res = NULL;
    if (in->recorded) {
        expand(&b, n,
               "SELECT coalesce(max(version), 0), count(DISTINCT version) FROM @q:_migrations@");
        if (b.nomem) {
            rc = OUTBOX_ERR_NOMEM;
            goto done;
        }
        if ((rc = run(c, "read migrations", b.p, 0, NULL, &res, err, errlen)) != OUTBOX_OK)
            goto done;
        in->version = atoi(PQgetvalue(res, 0, 0));
        in->nversions = atoi(PQgetvalue(res, 0, 1));
    }
done:
    PQclear(res);
    free(b.p);
    free(tg.p);
    free(gfn.p);
    free(rels.p);
    free(fns.p);
    return rc;
}

/*
 * What was dropped or disabled by hand since the last migrate, found
 * before anything is applied: OUTBOX_ERR_SCHEMA with every problem and the
 * fix. Applying nothing and reporting "already at version N" would leave
 * the relay refusing to start, producers failing, or the relay running
 * without validation and wake-ups; re-running version 1 over a table whose
 * <table>_migrations was dropped would fail on the first object that
 * exists. The fix is `outboxd migrate --repair` (repair_sql), or for a
 * dropped table, the DROP statements of what is left, to reinstall.
 */
static int
check_installed(PGconn *c, const outbox_pg_names_t *n, char *err, size_t errlen)
{
    sbuf_t b = {0}, problems = {0};
    installed_t in;
    bool trigger_off, versions_off;
    int rc;

    if ((rc = read_installed(c, n, &in, err, errlen)) != OUTBOX_OK)
        return rc;
    /* 'O' and 'A' fire in every session; 'R' only where
     * session_replication_role = replica, 'D' never; 'X' is another trigger */
    trigger_off = in.trigger != 'O' && in.trigger != 'A';
    versions_off = !in.recorded || in.version < NMIGRATIONS || in.nversions != in.version;
    rc = OUTBOX_ERR_SCHEMA;
    if (!in.table && (in.version > 0 || (size_t)in.nmissing < NOBJECTS)) {
        expand(&b, n, leftovers);
        if (in.version > 0)
            snprintf(err, errlen,
                     "table %s is missing although %s records schema version %d (dropped by "
                     "hand?); to reinstall it empty, drop what is left of it and run `outboxd "
                     "migrate` again: %s",
                     n->qtable, n->qmigrations, in.version, b.nomem ? "" : b.p);
        else
            snprintf(err, errlen,
                     "table %s is missing but objects of an earlier install are there; to "
                     "install it empty, drop them and run `outboxd migrate` again: %s",
                     n->qtable, b.nomem ? "" : b.p);
    } else if (in.version > NMIGRATIONS) {
        snprintf(err, errlen,
                 "%s records schema version %d, newer than this build's %d: use the outboxd that "
                 "installed it",
                 n->qmigrations, in.version, NMIGRATIONS);
    } else if (!in.table) {
        rc = OUTBOX_OK; /* a first install */
    } else if (in.ncolumns < NCOLUMNS && (!in.recorded || in.version >= NMIGRATIONS)) {
        snprintf(err, errlen, "table %s %s but lacks %s of schema version %d: %s", n->qtable,
                 in.recorded ? "is recorded as an outbox table" : "exists", in.columns, NMIGRATIONS,
                 in.recorded ? "columns dropped by hand cannot be repaired; reinstall it"
                             : "it is not an outbox table outboxd installed; set `table` to "
                               "another name");
    } else if (in.ncolumns < NCOLUMNS) {
        rc = OUTBOX_OK; /* an earlier version: versions to apply */
    } else if (versions_off || in.nmissing > 0 || trigger_off) {
        char v[64] = "none";

        /* what is missing beside the versions: "A, B are missing; trigger T is off" */
        sb_add(&problems, in.missing);
        sb_add(&problems, in.nmissing > 1 ? " are missing" : in.nmissing == 1 ? " is missing" : "");
        if (trigger_off) {
            sb_add(&problems, in.nmissing > 0 ? "; trigger " : "trigger ");
            expand(&problems, n, "@n:_guard@");
            sb_add(&problems, in.trigger == 'D'   ? " is disabled"
                              : in.trigger == 'R' ? " is enabled for replicas only (ENABLE REPLICA)"
                              : in.trigger == 'X' ? " is not the guard (another timing or function)"
                                                  : " is missing");
            sb_add(&problems, " (without it nothing is validated and idle relays are not woken)");
        }
        if (in.recorded && in.version > 0)
            snprintf(v, sizeof(v), "only version %d", in.version);
        if (in.recorded && in.nversions != in.version)
            snprintf(v, sizeof(v), "%d of versions 1 to %d", in.nversions, in.version);
        if (versions_off)
            snprintf(err, errlen,
                     "table %s has the columns of schema version %d but %s records %s (%s by "
                     "hand?), so migrate cannot tell what to apply%s%s: `outboxd migrate "
                     "--repair` records the versions and creates again what is missing (the "
                     "table and its rows are kept; --repair --print shows the SQL)",
                     n->qtable, NMIGRATIONS, n->qmigrations, v,
                     in.recorded ? "rows deleted" : "dropped", problems.len > 0 ? "; also " : "",
                     problems.nomem ? "" : problems.p);
        else
            snprintf(err, errlen,
                     "%s records schema version %d of %s but %s (changed by hand?): `outboxd "
                     "migrate --repair` creates again what is missing (the table and its rows are "
                     "kept; --repair --print shows the SQL)",
                     n->qmigrations, in.version, n->qtable, problems.nomem ? "" : problems.p);
    } else {
        rc = OUTBOX_OK;
    }
    free(b.p);
    free(problems.p);
    return rc;
}

int
outbox_pg_schema_check(const outbox_pg_options_t *opt, char *err, size_t errlen)
{
    outbox_pg_names_t n = {0};
    PGconn *c = NULL;
    int rc;

    if ((rc = outbox_pg_names_init(&n, opt->schema, opt->table, err, errlen)) == OUTBOX_OK &&
        (rc = outbox_pg_connect(&c, opt->conninfo, err, errlen)) == OUTBOX_OK)
        rc = check_installed(c, &n, err, errlen);
    PQfinish(c);
    outbox_pg_names_free(&n);
    return rc;
}

/* repair_sql with its transaction, lock and recorded versions. */
static void
build_repair(sbuf_t *b, const outbox_pg_names_t *n)
{
    sbuf_t key = {0};
    char num[16];
    int i;

    add_lock_key(&key, n);
    sb_add(b, "-- outbox schema repair for ");
    sb_add(b, n->qtable);
    sb_add(b, ": what is missing of schema version ");
    snprintf(num, sizeof(num), "%d", NMIGRATIONS);
    sb_add(b, num);
    sb_add(b, " created again; the table and its rows are kept\n"
              "BEGIN;\nSELECT pg_advisory_xact_lock(hashtextextended(");
    add_literal(b, key.nomem ? "" : key.p);
    sb_add(b, ", 0));\n");
    expand(b, n, migrations_table);
    expand(b, n, repair_sql);
    expand(b, n, "INSERT INTO @q:_migrations@ (version, description) VALUES ");
    for (i = 0; i < NMIGRATIONS; i++) {
        snprintf(num, sizeof(num), "%s(%d, ", i > 0 ? ", " : "", migrations[i].version);
        sb_add(b, num);
        add_literal(b, migrations[i].description);
        sb_add(b, ")");
    }
    sb_add(b, " ON CONFLICT (version) DO NOTHING;\nCOMMIT;\n");
    b->nomem |= key.nomem;
    free(key.p);
}

int
outbox_pg_repair_sql(const char *schema, const char *table, char **sql_out)
{
    outbox_pg_names_t n;
    sbuf_t b = {0};
    char err[128];
    int rc;

    if ((rc = outbox_pg_names_init(&n, schema, table, err, sizeof(err))) != OUTBOX_OK)
        return rc;
    build_repair(&b, &n);
    outbox_pg_names_free(&n);
    if (b.nomem) {
        free(b.p);
        return OUTBOX_ERR_NOMEM;
    }
    *sql_out = b.p;
    return OUTBOX_OK;
}

int
outbox_pg_repair(const outbox_pg_options_t *opt, char *err, size_t errlen)
{
    outbox_pg_names_t n = {0};
    PGconn *c = NULL;
    installed_t in;
    sbuf_t b = {0};
    char e[8192];
    int rc;

    e[0] = '\0';
    if (opt == NULL) {
        rc = OUTBOX_ERR_CONFIG;
        snprintf(e, sizeof(e), "no options");
        goto done;
    }
    if ((rc = outbox_pg_names_init(&n, opt->schema, opt->table, e, sizeof(e))) != OUTBOX_OK ||
        (rc = outbox_pg_connect(&c, opt->conninfo, e, sizeof(e))) != OUTBOX_OK ||
        (rc = read_installed(c, &n, &in, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    rc = OUTBOX_ERR_SCHEMA;
    if (!in.table) {
        snprintf(e, sizeof(e),
                 "table %s is missing: repair keeps a table, it does not make one "
                 "(`outboxd migrate` installs it)",
                 n.qtable);
        goto done;
    }
    if (in.ncolumns < NCOLUMNS) {
        snprintf(e, sizeof(e),
                 "table %s lacks %s of schema version %d: repair restores that version's objects "
                 "beside a table that has its columns; %s",
                 n.qtable, in.columns, NMIGRATIONS,
                 in.recorded ? "run `outboxd migrate`"
                             : "it is not an outbox table outboxd installed: set `table` to "
                               "another name");
        goto done;
    }
    if (in.version > NMIGRATIONS) {
        snprintf(e, sizeof(e), "%s records schema version %d, newer than this build's %d",
                 n.qmigrations, in.version, NMIGRATIONS);
        goto done;
    }
    build_repair(&b, &n);
    if (b.nomem) {
        rc = OUTBOX_ERR_NOMEM;
        goto done;
    }
    if ((rc = run(c, "repair", b.p, 0, NULL, NULL, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    rc = check_installed(c, &n, e, sizeof(e));
done:
    if (c != NULL && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
    outbox_pg_names_free(&n);
    free(b.p);
    if (rc != OUTBOX_OK && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", e);
    return rc;
}

int
outbox_pg_migrate(const outbox_pg_options_t *opt, int *from, int *to, char *err, size_t errlen)
{
    outbox_pg_names_t n = {0};
    PGconn *c = NULL;
    char e[8192]; /* room for check_installed()'s list and fix */
    int rc, i, applied, before = -1, after = 0;

    e[0] = '\0';
    if (opt == NULL) {
        rc = OUTBOX_ERR_CONFIG;
        snprintf(e, sizeof(e), "no options");
        goto done;
    }
    if ((rc = outbox_pg_names_init(&n, opt->schema, opt->table, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    if ((rc = outbox_pg_connect(&c, opt->conninfo, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    if ((rc = check_installed(c, &n, e, sizeof(e))) != OUTBOX_OK)
        goto done;
    for (i = 0; i < NMIGRATIONS; i++) {
        rc = apply_one(c, &n, i, &applied, e, sizeof(e));
        if (rc != OUTBOX_OK)
            goto done;
        if (applied && before < 0)
            before = migrations[i].version - 1;
        after = migrations[i].version;
    }
    if (before < 0)
        before = after;
done:
    if (c != NULL && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
    outbox_pg_names_free(&n);
    if (rc != OUTBOX_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", e);
        return rc;
    }
    if (from != NULL)
        *from = before;
    if (to != NULL)
        *to = after;
    return OUTBOX_OK;
}
