/* snatch-reconcile: one-shot comparison of Redis with SQLite, republishing what the subscriber
 * never persisted, with a table on stdout. Single-threaded, blocking.
 *
 * Exit status: 0 consistent; 1 orders still missing from SQLite (after --wait) or SQLite holds
 * more units than Redis sold; 2 usage (a --db that does not exist included); 3 Redis, NATS or
 * SQLite unreachable / failing. */
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <nats/nats.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "auth.h"
#include "cli.h"
#include "compare.h"
#include "keyspace.h"
#include "log.h"
#include "nats_servers.h"
#include "orders_stream.h"
#include "republish.h"
#include "script.h"
#include "store.h"
#include "util.h"

#define MAX_EVENTS 1024
#define PROG "snatch-reconcile"

typedef struct config {
    const char *redis; /* HOST:PORT[,HOST:PORT...] */
    const char *nats;
    const char *db;
    const char *events[MAX_EVENTS];
    size_t nevents;
    bool dry_run;
    int wait_s;
    long long pending_ms; /* >= 0: only run reconcile_pending with this age */
    const char *policy;   /* the hosts' policy: order() renders republished orders */
    auth_config_t auth;
    log_format_t log_format;
} config_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: snatch-reconcile --redis HOST:PORT[,...] --db PATH [--nats URL] [options]\n"
            "Compares Redis (sold, order records) with SQLite (persisted orders) per event and\n"
            "republishes to JetStream every order that SQLite lacks (Nats-Msg-Id = order id, so\n"
            "republishing is always safe), deleting its {E}:pending entry once acknowledged.\n"
            "  --redis HOST:PORT[,...]  Redis with the sale's data: a standalone server, or\n"
            "                     seed nodes of a Redis Cluster\n"
            "  --db PATH          the subscriber's SQLite database (must exist: a mistyped\n"
            "                     path would make every order look missing)\n"
            "  --nats URL[,URL...]  NATS server, or a cluster's nodes (required unless\n"
            "                     --dry-run)\n"
            "  --event E          only this event (repeatable; default: all of snatch:events)\n"
            "  --policy PATH      the hosts' policy: republished orders get its order()\n"
            "                     payload, as the host publishes them (default: the built-in\n"
            "                     format, with a warning)\n"
            "  --dry-run          only report, republish nothing\n"
            "  --wait SECONDS     after republishing, poll SQLite up to SECONDS until the\n"
            "                     subscriber persisted every missing order\n"
            "  --pending MS       only republish {E}:pending entries older than MS ms (what\n"
            "                     the host's reconciliation thread does), print the count\n"
            "  --orders-max-age-ms MS, --orders-max-bytes BYTES\n"
            "                     retention of stream ORDERS if this run creates it (defaults\n"
            "                     7 days and 2 GiB, as snatch-host; 0: unlimited)\n"
            "  --orders-replicas N  its copies on a JetStream cluster (default 1)\n"
            "  --log-format text|json  log lines on stderr (default text; the table\n"
            "                     stays on stdout)\n"
            "  --version          print the version and exit\n"
            "  -h, --help         this text\n" AUTH_REDIS_USAGE AUTH_NATS_USAGE
            "Exit: 0 consistent, 1 orders missing or SQLite holds more than sold, 2 usage or\n"
            "no such --db, "
            "3 Redis/NATS/SQLite failure.\n");
}

static int parse_args(int argc, char **argv, config_t *c)
{
    static const struct option opts[] = {
        {"redis", required_argument, NULL, 'r'},
        {"nats", required_argument, NULL, 'n'},
        {"db", required_argument, NULL, 'd'},
        {"event", required_argument, NULL, 'e'},
        {"dry-run", no_argument, NULL, 'x'},
        {"wait", required_argument, NULL, 'w'},
        {"pending", required_argument, NULL, 'p'},
        {"policy", required_argument, NULL, 'P'},
        {ORDERS_MAX_AGE_FLAG, required_argument, NULL, 'A'},
        {ORDERS_MAX_BYTES_FLAG, required_argument, NULL, 'B'},
        {ORDERS_REPLICAS_FLAG, required_argument, NULL, 'R'},
        {"log-format", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        AUTH_REDIS_OPTIONS,
        AUTH_NATS_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int ch;
    int64_t v;
    char err[256];
    memset(c, 0, sizeof(*c));
    c->pending_ms = -1;
    cli_init();
    while ((ch = getopt_long(argc, argv, CLI_OPTSTRING "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            c->redis = optarg; /* checked by rsync_open */
            break;
        case 'n':
            if (nats_servers_check(optarg, err, sizeof(err)) != 0) {
                cli_usage_error(PROG, "%s", err);
                return -1;
            }
            c->nats = optarg;
            break;
        case 'd':
            c->db = optarg;
            break;
        case 'e':
            if (c->nevents == MAX_EVENTS)
                return -1;
            c->events[c->nevents++] = optarg;
            break;
        case 'x':
            c->dry_run = true;
            break;
        case 'w':
            if (cli_int_opt(PROG, "--wait", optarg, 0, INT_MAX, &v) != 0)
                return -1;
            c->wait_s = (int)v;
            break;
        case 'p':
            if (cli_int_opt(PROG, "--pending", optarg, 0, INT64_MAX, &v) != 0)
                return -1;
            c->pending_ms = v;
            break;
        case 'P':
            c->policy = optarg;
            break;
        case 'A':
        case 'B':
            if ((ch == 'A' ? orders_stream_set_max_age_ms(optarg, err, sizeof(err))
                           : orders_stream_set_max_bytes(optarg, err, sizeof(err))) != 0) {
                cli_usage_error(PROG, "%s", err);
                return -1;
            }
            break;
        case 'R':
            if (orders_stream_set_replicas(optarg, err, sizeof(err)) != 0) {
                cli_usage_error(PROG, "%s", err);
                return -1;
            }
            break;
        case 'V':
            cli_print_version(PROG);
            exit(0);
        case 'l':
            if (log_parse_format(optarg, &c->log_format) != 0) {
                fprintf(stderr, "reconcile: --log-format must be text or json\n");
                return -1;
            }
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            switch (auth_parse_opt(&c->auth, ch, optarg, PROG)) {
            case 0:
                break;
            case 1:
                cli_bad_option(PROG, ch, argv);
                return -1;
            default:
                return -1;
            }
            break;
        }
    }
    if (auth_check(&c->auth, PROG) != 0)
        return -1;
    const char *missing = c->redis == NULL                     ? "--redis"
                          : c->db == NULL && c->pending_ms < 0 ? "--db"
                          : !c->dry_run && c->nats == NULL     ? "--nats (or --dry-run)"
                                                               : NULL;
    if (missing != NULL) {
        cli_usage_error(PROG, "missing %s", missing);
        return -1;
    }
    if (c->dry_run && c->pending_ms >= 0) {
        cli_usage_error(PROG, "--dry-run and --pending exclude each other");
        return -1;
    }
    if (optind != argc) {
        cli_usage_error(PROG, "unexpected argument %s", argv[optind]);
        return -1;
    }
    return 0;
}

static void print_table(const reconcile_row_t *rows, size_t n)
{
    printf("%-24s %10s %10s %12s %11s %8s %11s %6s\n", "event", "stock", "sold(redis)",
           "orders(redis)", "rows(sqlite)", "missing", "republished", "extra");
    for (size_t i = 0; i < n; i++) {
        const reconcile_row_t *r = &rows[i];
        printf("%-24s %10lld %10lld %12lld %11lld %8lld %11lld %6lld\n", r->event,
               (long long)r->stock, (long long)r->sold, (long long)r->redis_orders,
               (long long)r->sqlite_rows, (long long)r->missing, (long long)r->republished,
               (long long)r->extra);
    }
    fflush(stdout);
}

/* After a failed event on a standalone server: whether the server still answers (if not,
 * nothing else can be read). A cluster's other masters may still serve the other events. */
static bool redis_gone(rsync_t *rs)
{
    char err[256];
    if (rsync_is_cluster(rs))
        return false;
    redisReply *r = rsync_command(rs, "", err, sizeof(err), "PING");
    freeReplyObject(r);
    return r == NULL;
}

/* Polls until no event has missing orders or the deadline passed. Updates rows' sqlite columns
 * and sets missing to what is still missing. */
static int wait_caught_up(rsync_t *rs, store_t *st, reconcile_row_t *rows, size_t n, int wait_s)
{
    time_t deadline = time(NULL) + wait_s;
    char err[256];
    for (;;) {
        int64_t missing = 0;
        for (size_t i = 0; i < n; i++) {
            reconcile_row_t now;
            if (reconcile_event(rs, NULL, NULL, st, rows[i].event, &now, err, sizeof(err)) != 0) {
                log_error("reconcile: %s", err);
                return -1;
            }
            rows[i].sqlite_rows = now.sqlite_rows;
            rows[i].sqlite_units = now.sqlite_units;
            rows[i].extra = now.extra;
            rows[i].missing = now.missing;
            missing += now.missing;
        }
        if (missing == 0 || time(NULL) >= deadline)
            return 0;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static natsStatus connect_nats(natsConnection **nc, const config_t *c)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = nats_servers_apply(o, c->nats);
    if (s == NATS_OK)
        s = auth_nats_apply(o, &c->auth);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    return s;
}

static int render(void *ctx, const char *record, size_t len, char *out, size_t cap)
{
    return script_order_from_record(ctx, record, len, out, cap);
}

/* The policy whose order() renders republished orders; NULL (built-in format) without --policy.
 * Returns 0, or -1 when --policy names a policy that does not load or fails the host's check
 * (which also stops a policy that loops at load or in its sample calls: a tool run by a timer
 * must not hang on it for good). */
static int open_policy(const config_t *c, script_t **out)
{
    char err[2048];
    script_env_t env = {.host_id = "", .hosts = 1};
    *out = NULL;
    if (c->policy == NULL) {
        if (!c->dry_run)
            log_warn("reconcile: no --policy: republished orders get the built-in payload; give "
                     "the hosts' --policy if its order() differs");
        return 0;
    }
    if (script_check(c->policy, &env, err, sizeof(err)) != 0 ||
        script_open_bounded(out, c->policy, &env, err, sizeof(err)) != 0) {
        log_error("reconcile: --policy %s: %s", c->policy, err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    config_t c;
    rsync_t *rs = NULL;
    natsConnection *nc = NULL;
    store_t *st = NULL;
    char **listed = NULL;
    size_t nlisted = 0, n;
    reconcile_row_t *rows = NULL;
    script_t *policy = NULL;
    char err[512];
    int status = 3;

    /* As in snatch-host: the policy's HMAC must not initialise libcrypto with an exit cleanup
     * that frees again what cnats (with TLS) freed when it closed. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
    log_init("snatch-reconcile", LOG_FORMAT_TEXT);
    if (parse_args(argc, argv, &c) != 0)
        return 2;
    log_init("snatch-reconcile", c.log_format);
    /* SQLite would create a missing file, and an empty database makes every order "missing":
     * a typo in --db must not republish a whole sale. */
    struct stat sb;
    if (c.pending_ms < 0 && (stat(c.db, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        fprintf(stderr, PROG ": --db %s: %s (the subscriber's database must exist)\n", c.db,
                stat(c.db, &sb) != 0 ? strerror(errno) : "not a regular file");
        status = 2;
        goto out;
    }
    if (open_policy(&c, &policy) != 0) {
        status = 2;
        goto out;
    }
    reconcile_render_t rr = {.fn = render, .ctx = policy};
    rs = rsync_open(c.redis, &c.auth, 10000, err, sizeof(err));
    if (rs == NULL) {
        log_error("reconcile: Redis %s: %s", c.redis, err);
        goto out;
    }
    if (!c.dry_run && connect_nats(&nc, &c) != NATS_OK) {
        log_error("reconcile: NATS %s: %s", c.nats, nats_GetLastError(NULL));
        goto out;
    }
    if (c.pending_ms >= 0) {
        int done = reconcile_pending(rs, nc, &rr, c.pending_ms, 0, NULL, NULL);
        printf("republished %d pending orders\n", done < 0 ? 0 : done);
        status = done < 0 ? 3 : 0;
        goto out;
    }
    if (store_open(&st, c.db, STORE_SYNC_NORMAL, err, sizeof(err)) != 0) {
        log_error("reconcile: %s", err);
        goto out;
    }
    if (c.nevents == 0) {
        if (reconcile_list_events(rs, &listed, &nlisted) != 0) {
            log_error("reconcile: cannot read %s", KEYSPACE_EVENTS);
            goto out;
        }
    }
    n = c.nevents ? c.nevents : nlisted;
    if (n > 0 && (rows = calloc(n, sizeof(*rows))) == NULL)
        goto out;
    bool failed = false;
    for (size_t i = 0; i < n; i++) {
        const char *ev = c.nevents ? c.events[i] : listed[i];
        if (!util_valid_name(ev, strlen(ev), SNATCH_NAME_MAX)) {
            log_warn("reconcile: %s: not a valid event name, skipped", ev);
            snprintf(rows[i].event, sizeof(rows[i].event), "%s", ev);
            failed = true;
            continue;
        }
        /* One event that cannot be reconciled must not keep the others from it. */
        if (reconcile_event(rs, nc, &rr, st, ev, &rows[i], err, sizeof(err)) == 0)
            continue;
        log_error("reconcile: %s (the other events go on)", err);
        failed = true;
        if (redis_gone(rs))
            break;
    }
    print_table(rows, n);
    status = 0;
    if (reconcile_skipped() > 0)
        log_warn("reconcile: %llu orders or events skipped (see above)",
                 (unsigned long long)reconcile_skipped());
    bool any_missing = false;
    for (size_t i = 0; i < n; i++)
        any_missing |= rows[i].missing > 0;
    if (any_missing && c.wait_s > 0) {
        if (wait_caught_up(rs, st, rows, n, c.wait_s) != 0) {
            status = 3;
            goto out;
        }
        printf("after waiting up to %d s:\n", c.wait_s);
        print_table(rows, n);
    }
    /* The entries of batches republished above go once SQLite holds all of their orders. */
    for (size_t i = 0; nc != NULL && any_missing && i < n; i++)
        if (rows[i].republished > 0 &&
            reconcile_forget_stored(rs, st, rows[i].event, err, sizeof(err)) != 0) {
            log_error("reconcile: %s", err);
            failed = true;
        }
    for (size_t i = 0; i < n; i++) {
        const reconcile_row_t *r = &rows[i];
        if (r->missing > 0) {
            log_error("reconcile: %s: %lld orders missing from SQLite", r->event,
                      (long long)r->missing);
            status = 1;
        }
        if (r->sqlite_units > r->sold) {
            log_error("reconcile: %s: SQLite holds %lld units, Redis sold %lld", r->event,
                      (long long)r->sqlite_units, (long long)r->sold);
            status = 1;
        }
    }
    if (failed)
        status = 3;
out:
    free(rows);
    reconcile_free_events(listed, nlisted);
    store_close(st);
    script_close(policy);
    natsConnection_Destroy(nc);
    rsync_close(rs);
    nats_CloseAndWait(2000);
    auth_free(&c.auth);
    return status;
}
