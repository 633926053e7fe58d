/* The ORDERS stream's one definition (name, subjects, file storage, duplicate window, retention),
 * shared by everything that may create it: the host's publisher, snatch-reconcile (which may run
 * before any host did) and the test/benchmark filler. Blocking (a JetStream request): never on a
 * loop thread. Depends on cnats only. */
#ifndef SNATCH_ORDERS_STREAM_H
#define SNATCH_ORDERS_STREAM_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#define ORDERS_STREAM "ORDERS"
#define ORDERS_SUBJECT_PREFIX "orders."
#define ORDERS_SUBJECTS ORDERS_SUBJECT_PREFIX ">"
/* Headers of the order life (README "Order states"). An order message sold with a hold carries
 * Snatch-Hold-Until (its deadline, ms); without it the order is paid at once. A transition is
 * a message of its own on the same subject, Nats-Msg-Id "<order id>:<state>", header
 * Snatch-Transition: <state>, payload {"order_id","event","user","qty","state","at"}. */
#define ORDERS_HDR_HOLD_UNTIL "Snatch-Hold-Until"
#define ORDERS_HDR_TRANSITION "Snatch-Transition"
/* A batch: one message holding n > 1 orders of one event and one hold_until, one record a line,
 * Nats-Msg-Id "<first order id>+<n>" (order_msg.h reads it). */
#define ORDERS_HDR_COUNT "Snatch-Orders"

/* The largest order payload (the policy's order()) published, NUL included; beyond it the
 * built-in format is published instead. The same bound for the host and every republish. */
#define ORDERS_PAYLOAD_MAX 1024
/* JetStream's de-duplication window for Nats-Msg-Id. Correctness does not depend on it (SQLite
 * keeps one row per order id whatever the stream holds); it spares the stream and the subscriber
 * the repeats of a republish done within it. The server keeps every id of the window in memory
 * (rate x window: 12 M ids at 100k orders/s), which is why it is not hours. Reconciliation of
 * pending orders should run well inside it (the host's pass: orders older than ~30 s). */
#define ORDERS_DUPLICATES_WINDOW_MS (2 * 60 * 1000)

/* Retention. The stream is a hand-over buffer to the subscriber, not the record (Redis and
 * SQLite are): without limits it would grow with every sale forever. A message past either
 * limit is deleted whether or not the subscriber has it yet (JetStream's limits policy, discard
 * old); such an order is still in Redis, and snatch-reconcile republishes what SQLite lacks.
 * A week covers a subscriber down over a long weekend; 2 GiB holds ~7 M orders. */
#define ORDERS_DEFAULT_MAX_AGE_MS (7LL * 24 * 3600 * 1000)
#define ORDERS_DEFAULT_MAX_BYTES (2LL << 30)
#define ORDERS_MAX_AGE_FLAG "orders-max-age-ms"
#define ORDERS_MAX_BYTES_FLAG "orders-max-bytes"
/* Copies of the stream on a JetStream cluster (R3 on three nodes: a stream and its durable
 * consumer, which inherits the count, survive the loss of any one node). JetStream's limit is 5;
 * a standalone nats-server refuses more than 1. */
#define ORDERS_REPLICAS_FLAG "orders-replicas"
#define ORDERS_REPLICAS_MAX 5

/* Sets the retention used when this process creates the stream (0: unlimited). Call before any
 * thread that may create the stream starts. Returns -1 with a message in err when a value is
 * out of range (age: 0 or at least the duplicate window, which JetStream requires). */
int orders_stream_set_max_age_ms(const char *value, char *err, size_t errlen);
int orders_stream_set_max_bytes(const char *value, char *err, size_t errlen);
/* The replica count used when this process creates the stream (default 1). An existing stream
 * keeps its own, with a warning when it differs. */
int orders_stream_set_replicas(const char *value, char *err, size_t errlen);

/* Makes sure the stream exists (creating it when missing; another process creating it at the
 * same time counts as success). An existing stream is left as it is, with a warning on stderr
 * when its retention or replica count differs from this process's. Returns NATS_OK or the
 * failure, with *jerr when JetStream said why; NATS_NO_RESPONDERS when the stream exists on a
 * cluster but has no leader (an election is under way: publishes would get no answer), and
 * NATS_TIMEOUT when JetStream did not answer within the context's Wait (what a request for
 * the info of a stream without a leader mostly gets). *created tells whether this call created it
 * (may be NULL). */
natsStatus orders_stream_ensure(jsCtx *js, jsErrCode *jerr, int *created);

#endif
