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
 * The heap corruption showed as a glibc "double free or corruption" abort of the subscriber.
 *
 * Asking for exactly the number already waiting makes _fetch take them and return before its
 * loop (count == batch): no request is sent, nothing more is stored. Only when nothing waits is
 * a normal fetch made; its loop stops at batch when k is 0. Still open, both needing an old
 * request that goes on delivering: messages landing between the two calls (k > 0 again), and a
 * status message waiting (an old request's late 408: counted as waiting, not taken), after which
 * the fetch requests the difference and overflows if more than that arrives in its timeout. */
#include "fetch.h"

natsStatus fetch_batch(natsMsgList *list, natsSubscription *sub, int batch, int64_t timeout_ms,
                       jsErrCode *jerr)
{
    int waiting = 0;
    if (natsSubscription_GetPending(sub, &waiting, NULL) == NATS_OK && waiting > 0)
        batch = waiting < batch ? waiting : batch;
    return natsSubscription_Fetch(list, sub, batch, timeout_ms, jerr);
}
