/* The ORDERS stream's one definition (name, subjects, file storage, duplicate window), shared by
 * everything that may create it: the host's publisher, snatch-reconcile (which may run before
 * any host did) and the test/benchmark filler. Blocking (a JetStream request): never on a loop
 * thread. Depends on cnats only. */
#ifndef SNATCH_ORDERS_STREAM_H
#define SNATCH_ORDERS_STREAM_H

#include <nats/nats.h>

#define ORDERS_STREAM "ORDERS"
#define ORDERS_SUBJECT_PREFIX "orders."
/* JetStream's de-duplication window for Nats-Msg-Id. Correctness does not depend on it (SQLite
 * keeps one row per order id whatever the stream holds); it spares the stream and the subscriber
 * the repeats of a republish done within it. The server keeps every id of the window in memory
 * (rate x window: 12 M ids at 100k orders/s), which is why it is not hours. Reconciliation of
 * pending orders should run well inside it (the host's pass: orders older than ~30 s). */
#define ORDERS_DUPLICATES_WINDOW_MS (2 * 60 * 1000)

/* Makes sure the stream exists (creating it when missing; another process creating it at the
 * same time counts as success). Returns NATS_OK or the failure, with *jerr when JetStream
 * said why. *created tells whether this call created it (may be NULL). */
natsStatus orders_stream_ensure(jsCtx *js, jsErrCode *jerr, int *created);

#endif
