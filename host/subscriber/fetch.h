/* snatch-subscriber's pull from its durable consumer, kept clear of a
 * heap overflow in the cnats of Debian 12 (see fetch.c). Blocking: the fetcher thread only. */
#ifndef SNATCH_FETCH_H
#define SNATCH_FETCH_H

#include <nats/nats.h>
#include <stdint.h>

/* Up to batch messages, never more: when messages are already waiting in the subscription they
 * are returned alone (at once, without a new pull request; NATS_TIMEOUT with none when what
 * waited was only a status message). Otherwise one pull request takes what the stream holds
 * now, or, when it holds nothing, the first messages that arrive within timeout_ms; NATS_OK
 * with at least one message, NATS_TIMEOUT with none, or an error. Unlike natsSubscription_Fetch
 * it does not wait for the batch to fill: the caller decides how long messages gather. */
natsStatus fetch_batch(natsMsgList *list, natsSubscription *sub, int batch, int64_t timeout_ms,
                       jsErrCode *jerr);

#endif
