/* host/common/log.c: the line format (RFC 3339 UTC time with ms, level, program), JSON escaping
 * that round-trips through a JSON parser, cutting of long messages, and whole lines from concurrent
 * threads. stderr is pointed at a temp file while a test logs. */
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

#define TS_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

static int saved_fd = -1;
static char path[] = "/tmp/snatch-test-log-XXXXXX";

static void capture_start(void)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    saved_fd = dup(STDERR_FILENO);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

/* Restores stderr and returns what was logged (malloc'd). */
static char *capture_end(size_t *len)
{
    dup2(saved_fd, STDERR_FILENO);
    close(saved_fd);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    strcpy(path, "/tmp/snatch-test-log-XXXXXX");
    *len = (size_t)n;
    return buf;
}

static void assert_matches(const char *s, const char *re)
{
    regex_t r;
    assert_int_equal(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&r, s, 0, NULL, 0);
    regfree(&r);
    if (rc != 0)
        fail_msg("%s does not match %s", s, re);
}

static void test_text_line(void **state)
{
    (void)state;
    size_t len;
    log_init("test-prog", LOG_FORMAT_TEXT);
    capture_start();
    log_warn("redis: connection lost: %s (%d)\n", "reset", 42);
    log_info("two\nlines\tand a tab");
    char *out = capture_end(&len);
    char *second = strchr(out, '\n');
    assert_non_null(second);
    *second++ = '\0';
    assert_matches(out, "^" TS_RE " test-prog warn redis: connection lost: reset \\(42\\)$");
    assert_matches(second, "^" TS_RE " test-prog info two lines and a tab\n$");
    free(out);
}

static void test_json_round_trip(void **state)
{
    (void)state;
    const char *msg = "quote \" backslash \\ newline \n tab \t bell \x01 utf8 \xc3\xa9 end";
    size_t len;
    log_init("test-prog", LOG_FORMAT_JSON);
    capture_start();
    log_error("%s", msg);
    char *out = capture_end(&len);
    assert_true(len > 0 && out[len - 1] == '\n');
    assert_null(memchr(out, '\n', len - 1)); /* one line */
    json_error_t jerr;
    json_t *doc = json_loads(out, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(doc, "msg")), msg);
    assert_string_equal(json_string_value(json_object_get(doc, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(doc, "program")), "test-prog");
    assert_matches(json_string_value(json_object_get(doc, "ts")), "^" TS_RE "$");
    assert_int_equal(json_object_size(doc), 4);
    json_decref(doc);
    free(out);
}

static void test_long_message_is_cut_whole(void **state)
{
    (void)state;
    char *big = malloc(3 * SNATCH_LOG_LINE_MAX);
    assert_non_null(big);
    /* Quotes double in JSON: the cut must not split an escape. */
    for (size_t i = 0; i < 3 * SNATCH_LOG_LINE_MAX - 1; i++)
        big[i] = i % 2 ? '"' : 'x';
    big[3 * SNATCH_LOG_LINE_MAX - 1] = '\0';
    for (int json = 0; json <= 1; json++) {
        size_t len;
        log_init("test-prog", json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
        capture_start();
        log_info("%s", big);
        char *out = capture_end(&len);
        assert_true(len <= SNATCH_LOG_LINE_MAX);
        assert_true(len > SNATCH_LOG_LINE_MAX / 2);
        assert_true(out[len - 1] == '\n');
        assert_null(memchr(out, '\n', len - 1));
        if (json) {
            json_t *doc = json_loads(out, 0, NULL);
            assert_non_null(doc);
            json_decref(doc);
        }
        free(out);
    }
    free(big);
}

#define THREADS 4
#define LINES 2000

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < LINES; i++)
        log_info("thread %d line %d %s", t, i,
                 "padding padding padding padding padding padding padding padding padding");
    return NULL;
}

static void test_threads_never_interleave(void **state)
{
    (void)state;
    pthread_t th[THREADS];
    int seen[THREADS] = {0};
    size_t len;
    log_init("test-prog", LOG_FORMAT_TEXT);
    capture_start();
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    char *out = capture_end(&len);
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        int t, i;
        assert_matches(l, "^" TS_RE " test-prog info thread [0-9] line [0-9]+ (padding ?){9}$");
        assert_int_equal(sscanf(strstr(l, "thread"), "thread %d line %d", &t, &i), 2);
        assert_int_equal(i, seen[t]); /* each thread's lines complete and in order */
        seen[t]++;
        lines++;
    }
    assert_int_equal(lines, THREADS * LINES);
    free(out);
}

static void test_parse_format(void **state)
{
    (void)state;
    log_format_t f;
    assert_int_equal(log_parse_format("json", &f), 0);
    assert_int_equal(f, LOG_FORMAT_JSON);
    assert_int_equal(log_parse_format("text", &f), 0);
    assert_int_equal(f, LOG_FORMAT_TEXT);
    assert_int_equal(log_parse_format("xml", &f), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_line),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_long_message_is_cut_whole),
        cmocka_unit_test(test_threads_never_interleave),
        cmocka_unit_test(test_parse_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
