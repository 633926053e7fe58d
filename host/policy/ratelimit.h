/* Per-key token buckets shared by every loop thread, for the policy's rate limits (per buyer,
 * per client address, ...). A bounded table: striped locks, stale buckets reclaimed, and when the
 * table is full the oldest bucket of a stripe is reused, so an attacker with endless keys costs
 * memory once, not forever. */
#ifndef SNATCH_RATELIMIT_H
#define SNATCH_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int ratelimit_init(size_t capacity);
void ratelimit_shutdown(void);

/* Takes cost tokens from key's bucket (refilled at rate tokens/s, holding at most burst).
 * Returns true when allowed. A new key starts with a full bucket. now_us: util_mono_us(). */
bool ratelimit_take(const char *key, size_t len, double rate, double burst, double cost,
                    uint64_t now_us);

#endif
