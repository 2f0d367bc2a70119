/* outbox version and the schema version its migrations install. */
#ifndef OUTBOX_VERSION_H
#define OUTBOX_VERSION_H

#define OUTBOX_VERSION_MAJOR 0
#define OUTBOX_VERSION_MINOR 1
#define OUTBOX_VERSION_PATCH 0
#define OUTBOX_VERSION_STRING "0.1.0"

/* Highest schema migration this build knows; `outboxd migrate` brings a
 * database up to it, `outboxd run` refuses a database below it. */
#define OUTBOX_SCHEMA_VERSION 2

#endif
