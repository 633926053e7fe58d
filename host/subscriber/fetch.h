/* snatch-subscriber's pull from its durable consumer: natsSubscription_Fetch, kept clear of a
 * heap overflow in the cnats of Debian 12 (see fetch.c). Blocking: the fetcher thread only. */
#ifndef SNATCH_FETCH_H
#define SNATCH_FETCH_H

#include <nats/nats.h>
#include <stdint.h>

/* As natsSubscription_Fetch(list, sub, batch, timeout_ms, jerr), and never more than batch
 * messages: when messages are already waiting in the subscription they are returned alone (at
 * most batch of them, at once, without a new pull request; NATS_TIMEOUT with none when what
 * waited was only a status message). */
natsStatus fetch_batch(natsMsgList *list, natsSubscription *sub, int batch, int64_t timeout_ms,
                       jsErrCode *jerr);

#endif
