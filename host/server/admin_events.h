/* Live administration of events (PUT, which creates or resets, lives in api.c):
 *   PATCH /admin/events/{e}            {"stock":N,"per_user_limit":K} (either or both)
 *   POST  /admin/events/{e}/pause      deduct.lua refuses every sale of the event
 *   POST  /admin/events/{e}/resume
 *   GET   /admin/events                every event with its counters
 * Each answers req (now or after Redis). Loop thread. */
#ifndef SNATCH_ADMIN_EVENTS_H
#define SNATCH_ADMIN_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "http.h"
#include "worker.h"

void admin_patch_event(http_request_t *req, const char *event, size_t len);
void admin_pause_event(http_request_t *req, const char *event, size_t len, bool pause);
void admin_list_events(http_request_t *req);

/* Parses the body of PUT (put true: {"stock":N,"per_user_limit":K}, K optional, default 1) or of
 * PATCH (put false: see admin_parse_patch_body): one rule for both. Returns NULL with the outputs
 * written, or a static reason for a 400 with the outputs untouched. Pure. */
const char *admin_parse_event_fields(const char *body, size_t len, bool put, int64_t *stock,
                                     int64_t *limit);

/* Parses a PATCH body: {"stock":N} (0..10^12), {"per_user_limit":K} (1..10^6) or both, nothing
 * else. Returns NULL with the absent one -1, or a static reason for a 400. Pure. */
const char *admin_parse_patch_body(const char *body, size_t len, int64_t *stock, int64_t *limit);

#endif
