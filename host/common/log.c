/* Log lines; see log.h. No shared mutable state after log_init: every call formats into its own
 * stack buffers. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *program = "snatch";
static log_format_t format = LOG_FORMAT_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *prog, log_format_t fmt)
{
    program = prog;
    format = fmt;
}

int log_parse_format(const char *s, log_format_t *out)
{
    if (strcmp(s, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return -1;
    return 0;
}

/* "2026-11-30T11:05:00.123Z" into ts (at least 32 bytes). */
static void timestamp(char *ts, size_t len)
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, len - n, ".%03ldZ", now.tv_nsec / 1000000);
}

/* Appends msg to line at *pos (room: cap, one byte kept for the newline): JSON-escaped, or in
 * text with control characters (tracebacks have newlines and tabs) as spaces. Stops before a
 * character that would not fit whole. */
static void append_msg(char *line, size_t cap, size_t *pos, const char *msg, int json)
{
    static const char hex[] = "0123456789abcdef";
    for (const char *p = msg; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        char esc[6];
        size_t n = 0;
        if (!json)
            esc[n++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
        else if (c == '"' || c == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)c;
        } else if (c == '\n') {
            esc[n++] = '\\';
            esc[n++] = 'n';
        } else if (c == '\t') {
            esc[n++] = '\\';
            esc[n++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else
            esc[n++] = (char)c;
        if (*pos + n > cap)
            return;
        memcpy(line + *pos, esc, n);
        *pos += n;
    }
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    int saved = errno; /* callers may log between a failure and reading errno */
    char msg[SNATCH_LOG_LINE_MAX], line[SNATCH_LOG_LINE_MAX], ts[40];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        snprintf(msg, sizeof(msg), "(unformattable message: %s)", fmt);
    size_t mlen = strlen(msg);
    while (mlen > 0 && msg[mlen - 1] == '\n')
        msg[--mlen] = '\0';
    if ((unsigned)level > LOG_LEVEL_ERROR)
        level = LOG_LEVEL_ERROR;
    timestamp(ts, sizeof(ts));
    const int json = format == LOG_FORMAT_JSON;
    size_t pos;
    if (json)
        pos = (size_t)snprintf(line, sizeof(line),
                               "{\"ts\":\"%s\",\"level\":\"%s\",\"program\":\"%s\",\"msg\":\"", ts,
                               level_names[level], program);
    else
        pos = (size_t)snprintf(line, sizeof(line), "%s %s %s ", ts, program, level_names[level]);
    /* The tail ("\"}\n" or "\n") always fits: the message is cut before it. */
    size_t cap = sizeof(line) - (json ? 3 : 1);
    if (pos > cap)
        pos = cap;
    append_msg(line, cap, &pos, msg, json);
    if (json) {
        memcpy(line + pos, "\"}", 2);
        pos += 2;
    }
    line[pos++] = '\n';
    for (size_t off = 0; off < pos;) {
        ssize_t w = write(STDERR_FILENO, line + off, pos - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* stderr gone: nowhere to report it */
        off += (size_t)w;
    }
    errno = saved;
}
