/* See fetch.h.
 *
 * Why not natsSubscription_Fetch alone: in cnats before 3.8.3 (Debian 12 ships 3.4.1), _fetch
 * allocates room for batch messages, first takes the k messages already waiting in the
 * subscription, then sends a pull request for batch - k and loops "while count != batch" where
 * batch has meanwhile become batch - k. When k >= batch / 2 that test never stops the loop: it
 * runs until the timeout and stores every message that arrives into the array, past its end as
 * soon as more than batch - k come (upstream fix: nats.c #749). Messages do wait in the
 * subscription between fetches: those of a pull request still open on the server after an
 * earlier fetch returned (it took fewer than it asked for, or gave up at its timeout while the
 * server still delivered), and those keep arriving during the next fetch, with that fetch's own.
 * The heap corruption showed as a glibc "double free or corruption" abort of the subscriber;
 * ASan does not see it (the write is inside libnats, which is not instrumented), hence
 * test_fetch checks the count returned.
 *
 * So when messages wait, they are taken alone: a fetch request for at most that many, whose
 * expiry (1 ns) has passed before the loop could send a pull request; _fetch then returns what
 * it took (none when only a status message was waiting, an old request's late 408: counted as
 * waiting, never returned). Only when nothing waits is a pull request sent (fetch_available), and
 * with k = 0 its loop stops at batch. Left open: messages landing between
 * natsSubscription_GetPending and _fetch (k > 0 again) while an old request still delivers; it
 * takes half a batch of them in that instant, and more after. cnats >= 3.8.3 needs none of this. */
#include "fetch.h"

/* One pull request, no_wait with an expiry: the server delivers what the stream holds now (up to
 * batch) and ends the request with a 408 status; when the stream holds nothing, it waits up to the
 * expiry for the first messages and ends the request as soon as it has delivered those
 * (nats-server's "one-shot" request). So a message is never trickled one pull request deep: the
 * messages that arrived since the last request travel together, in one burst (one wake-up of the
 * consumer, one write to our socket), which natsSubscription_Fetch's waiting request does not do
 * (it stays open until the batch is full, taking each new message as it arrives). */
static natsStatus fetch_available(natsMsgList *list, natsSubscription *sub, int batch,
                                  int64_t timeout_ms)
{
    jsFetchRequest req;
    jsFetchRequest_Init(&req);
    req.Batch = batch;
    req.NoWait = true;
    req.Expires = timeout_ms * 1000000;
    natsStatus s = natsSubscription_FetchRequest(list, sub, &req);
    /* A 404 (no messages) is only answered to a no_wait request without an expiry: as a timeout
     * it is what it means here. */
    return s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
}

natsStatus fetch_batch(natsMsgList *list, natsSubscription *sub, int batch, int64_t timeout_ms,
                       jsErrCode *jerr)
{
    int waiting = 0;
    jsFetchRequest req;
    if (jerr != NULL)
        *jerr = 0;
    if (natsSubscription_GetPending(sub, &waiting, NULL) != NATS_OK || waiting == 0)
        return fetch_available(list, sub, batch, timeout_ms);
    jsFetchRequest_Init(&req);
    req.Batch = waiting < batch ? waiting : batch;
    req.Expires = 1;
    return natsSubscription_FetchRequest(list, sub, &req);
}
