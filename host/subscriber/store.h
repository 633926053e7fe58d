/* SQLite persistence of orders (snatch-subscriber's side): schema, batched idempotent inserts,
 * dead letters, and the look-ups reconciliation needs. One store_t per thread. */
#ifndef SNATCH_STORE_H
#define SNATCH_STORE_H
#include <stddef.h>
#include <stdint.h>
typedef struct store store_t;
int store_open(store_t **out, const char *path, char *err, size_t errlen);
void store_close(store_t *s);
#endif
