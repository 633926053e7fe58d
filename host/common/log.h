/* Log lines of every snatch program on stderr, one line per message:
 *   text: 2026-11-30T11:05:00.123Z snatch-host warn redis: connection lost: ...
 *   json: {"ts":"2026-11-30T11:05:00.123Z","level":"warn","program":"snatch-host","msg":"..."}
 * Time is UTC with milliseconds (RFC 3339). Each line is formatted on the caller's stack and
 * written with one write(2) (at most SNATCH_LOG_LINE_MAX bytes, longer messages are cut), so lines
 * of several threads never interleave and no lock is taken. Usage and help texts are not log lines
 * and do not go through here. */
#ifndef SNATCH_LOG_H
#define SNATCH_LOG_H

#define SNATCH_LOG_LINE_MAX 4096 /* <= PIPE_BUF: a write to a pipe is atomic */

typedef enum { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR } log_level_t;
typedef enum { LOG_FORMAT_TEXT, LOG_FORMAT_JSON } log_format_t;

/* Sets the program name and format; call once at start, before other threads exist. Before it,
 * lines say "snatch" and are text. */
void log_init(const char *program, log_format_t format);
/* "text" or "json": 0, else -1. */
int log_parse_format(const char *s, log_format_t *out);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
