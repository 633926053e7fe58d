/* What every snatch program's command line has in common: the version (one definition, in
 * CMakeLists.txt's project(), passed as SNATCH_VERSION), --version, and usage errors answered
 * with one line and a pointer to --help rather than the whole help text (which hides the
 * actual complaint). Header-only, but for cli_int_opt (cli.c, in snatch_common: the programs
 * that read numbers link it; snatch-bench, which does not, only includes this). */
#ifndef SNATCH_CLI_H
#define SNATCH_CLI_H

#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#ifndef SNATCH_VERSION
#error "SNATCH_VERSION comes from CMakeLists.txt (project VERSION)"
#endif

/* getopt_long option string prefix: ':' makes a missing argument distinguishable (':') from an
 * unknown option ('?'), and the program, not getopt, reports both. Use as CLI_OPTSTRING "h". */
#define CLI_OPTSTRING ":"

/* Call once before getopt_long: getopt must not print its own message. */
static inline void cli_init(void)
{
    opterr = 0;
}

static inline void cli_print_version(const char *prog)
{
    printf("%s %s\n", prog, SNATCH_VERSION);
}

/* "prog: <message> (see --help)" on stderr. */
static inline void cli_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void cli_usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see --help)\n");
}

/* An integer flag's value: digits only (no spaces, '+' or trailing text, which atoi/strtol let
 * through), within [min, max]. Returns 0 with *out set, or -1 after the usage error
 * "prog: NAME must be an integer from MIN to MAX (see --help)". */
int cli_int_opt(const char *prog, const char *name, const char *value, int64_t min, int64_t max,
                int64_t *out);

/* For getopt_long's '?' or ':' return: names the offending option. A long option is named as
 * typed (argv[optind - 1]); for a short one getopt may be inside a cluster like -xc, so optopt,
 * the character, is used. */
static inline void cli_bad_option(const char *prog, int ch, char **argv)
{
    char shortopt[3] = {'-', (char)optopt, '\0'};
    const char *typed = argv[optind - 1];
    const char *opt = typed[0] == '-' && typed[1] == '-' ? typed : shortopt;
    if (ch == ':')
        cli_usage_error(prog, "option %s needs a value", opt);
    else
        cli_usage_error(prog, "unknown option %s", opt);
}

#endif
