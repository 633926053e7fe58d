/* libFuzzer target for api_parse_event_body() and admin_parse_patch_body(), the bodies of PUT and
 * PATCH /admin/events/{e}: a body that is accepted must yield values the rest of the host can
 * trust (the sale script and the local quota take them as they are), and a refused one must carry a
 * static reason for the 400. It runs thousands of times faster than fuzz_http (no sockets), so it
 * is where JSON edge cases get found.
 *
 * Findings: crashes, sanitizer reports and leaks (jansson's allocations go through ASan), values
 * out of range, outputs written on failure, a reason that is not one of the static strings, and
 * answers that differ between two calls on the same bytes.
 *
 * The input is copied into a buffer of exactly its size with no terminating NUL, as http.c may hand
 * a body that is not followed by one: a read past the end is an ASan report.
 *
 * jansson is Debian's library, not instrumented: coverage guidance sees only the branches of api.c,
 * so the seed corpus and admin.dict carry the JSON shapes (numbers at and past each bound,
 * duplicates, escapes, nesting) that reach jansson's edge cases.
 *
 * Build: cmake -DFUZZ=ON -DCMAKE_C_COMPILER=clang; run: fuzz_admin_body tests/fuzz/corpus_admin */
#include <sanitizer/allocator_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_events.h"
#include "api.h"

#define STOCK_MAX 1000000000000LL
#define LIMIT_MAX 1000000LL
/* Sentinel the parser must leave alone when it refuses a body. */
#define UNTOUCHED INT64_MIN

static void check_patch(const uint8_t *data, size_t size);

static void fail(const char *what, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_admin_body: %s (input %zu bytes: %.*s)\n", what, size,
            (int)(size < 200 ? size : 200), (const char *)data);
    abort();
}

/* A reason must live as long as the program (the handler sends it after the parse): static data,
 * so never a heap block (ASan knows every one) and at the same address on every call. */
static void check_reason(const char *why, const char *first_why, const uint8_t *data, size_t size)
{
    if (__sanitizer_get_ownership(why))
        fail("reason is heap memory", data, size);
    if (why != first_why)
        fail("reason is not a static string (address changed between calls)", data, size);
    size_t n = strnlen(why, 200);
    if (n == 0 || n == 200)
        fail("reason is empty or not terminated", data, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_patch(data, size);
    char *body = malloc(size ? size : 1);
    if (body == NULL)
        abort();
    memcpy(body, data, size);

    int64_t stock = UNTOUCHED, limit = UNTOUCHED;
    const char *why = api_parse_event_body(body, size, &stock, &limit);
    int64_t stock2 = UNTOUCHED, limit2 = UNTOUCHED;
    const char *why2 = api_parse_event_body(body, size, &stock2, &limit2);
    free(body);

    if ((why == NULL) != (why2 == NULL))
        fail("accepted once, refused once", data, size);
    if (why != NULL) {
        check_reason(why2, why, data, size);
        /* The handler answers 400 and must not act on half-filled outputs; none are written for a
         * body refused before its fields are checked, and stock is never written on refusal. */
        if (stock != UNTOUCHED)
            fail("stock written for a refused body", data, size);
        return 0;
    }
    if (stock < 0 || stock > STOCK_MAX)
        fail("stock out of 0..10^12", data, size);
    if (limit < 1 || limit > LIMIT_MAX)
        fail("per_user_limit out of 1..10^6", data, size);
    if (stock != stock2 || limit != limit2)
        fail("two calls gave different values", data, size);
    return 0;
}

/* PATCH: either field may be absent (-1), not both; a refusal leaves both at -1. */
static void check_patch(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    if (body == NULL)
        abort();
    memcpy(body, data, size);
    int64_t stock = UNTOUCHED, limit = UNTOUCHED;
    const char *why = admin_parse_patch_body(body, size, &stock, &limit);
    int64_t stock2, limit2;
    const char *why2 = admin_parse_patch_body(body, size, &stock2, &limit2);
    free(body);
    if ((why == NULL) != (why2 == NULL))
        fail("PATCH: accepted once, refused once", data, size);
    if (why != NULL) {
        check_reason(why2, why, data, size);
        if (stock != -1 || limit != -1)
            fail("PATCH: outputs not -1 for a refused body", data, size);
        return;
    }
    if (stock == -1 && limit == -1)
        fail("PATCH: accepted with nothing to change", data, size);
    if (stock < -1 || stock > STOCK_MAX || limit == 0 || limit < -1 || limit > LIMIT_MAX)
        fail("PATCH: value out of range", data, size);
    if (stock != stock2 || limit != limit2)
        fail("PATCH: two calls gave different values", data, size);
}
