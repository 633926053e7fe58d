/* snatch-host: flags, start-up order, signals, shut-down order.
 *
 * Start: policy validated -> stock/metrics/rate limiter -> NATS publisher (connects in the
 * background) -> N worker threads (each: policy state, Redis, order lane, listener).
 * The main thread then only waits for signals on its own loop: SIGHUP validates the policy,
 * reads the deduct script and order.lua and hands them to every worker; SIGTERM/SIGINT stop
 * accepting, let in-flight sales finish, close, exit 0. */
#include <errno.h>
#include <getopt.h>
#include <nats/nats.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "auth.h"
#include "cli.h"
#include "life.h"
#include "log.h"
#include "metrics.h"
#include "nats_servers.h"
#include "orders.h"
#include "orders_stream.h"
#include "ratelimit.h"
#include "reconciler.h"
#include "repair.h"
#include "script.h"
#include "stallwatch.h"
#include "stock.h"
#include "util.h"
#include "worker.h"

#define MAX_THREADS 32

static host_t host;
static worker_t workers[MAX_THREADS];
static int n_workers;
static uv_signal_t sig_hup, sig_term, sig_int;
static char host_id_buf[SNATCH_NAME_MAX + 1];
static char deduct_buf[4096];
static uint64_t reconcile_interval_ms = 5000;
static bool redis_repair;
static int64_t reconcile_after_ms = 30000;
static int64_t rate_limit_keys = 1 << 18;
static int64_t max_events = STOCK_EVENTS_DEFAULT;
#define ADMIN_TOKEN_MIN 16
static int64_t max_conns;      /* 0: from the descriptor limit */
static int64_t max_per_client; /* 0: no cap */
/* Descriptors kept for everything but client connections: Redis and NATS connections, the
 * reconciler, files, libuv's internals. */
#define FD_RESERVE 256
static log_format_t log_format = LOG_FORMAT_TEXT;
static int64_t stall_exit_ms = STALL_EXIT_DEFAULT_MS;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: snatch-host [options] POLICY.lua\n"
            "       snatch-host --test POLICY.lua   (validate a policy and the Redis scripts, "
            "exit, like nginx -t)\n"
            "\n"
            "  --listen ADDR:PORT        where to serve HTTP (default 127.0.0.1:8080)\n"
            "  --threads N               event-loop threads (default: CPU count)\n"
            "  --redis HOST:PORT[,...]   Redis, the global stock (default 127.0.0.1:6379): a\n"
            "                            standalone server, or seed nodes of a Redis Cluster\n"
            "  --redis-timeout-ms MS     per Redis command (default 1000)\n"
            "  --redis-replicas N        a sale is confirmed once N replicas hold it (WAIT,\n"
            "                            at most half of --redis-timeout-ms; default: 1 on a\n"
            "                            cluster whose masters have replicas, else 0)\n"
            "  --nats URL[,URL...]       NATS with JetStream: one server, or the nodes of a\n"
            "                            cluster (default nats://127.0.0.1:4222)\n"
            "  --ack-timeout-ms MS       wait for the JetStream ack before answering 202 (5000)\n"
            "  --max-inflight N          unacknowledged orders per thread (default 4096)\n"
            "  --host-id ID              this host's name in orders (default: hostname)\n"
            "  --hosts N                 hosts sharing the sale, for allocate() (default 1)\n"
            "  --admin-token-file PATH   bearer token for /admin, 16+ bytes (absent: disabled)\n"
            "  --deduct PATH             Redis deduction script (default: deduct.lua next to\n"
            "                            the policy, else " SNATCH_DATA_DIR "/deduct.lua)\n"
            "  --max-head BYTES          request head cap, 431 beyond (default 8192)\n"
            "  --max-body BYTES          request body cap, 413 beyond (default 65536)\n"
            "  --idle-timeout-ms MS      keep-alive idle close (default 60000)\n"
            "  --header-timeout-ms MS    request head must arrive within (default 10000)\n"
            "  --reconcile-interval-ms MS  republish lost orders every MS (default 5000, 0: off)\n"
            "  --reconcile-after-ms MS   an unacknowledged order counts as lost after (30000)\n"
            "  --redis-repair            on a standalone Redis too, verify each event against\n"
            "                            the persisted orders (owner, lua/repair.lua) and\n"
            "                            repair it after a restart or promotion (cluster: always)\n"
            "  --log-format text|json    log lines on stderr (default text)\n"
            "  --rate-limit-keys N       buckets of the policy's host.limit() (default 262144,\n"
            "                            ~190 bytes each; when full the least recent is reused)\n"
            "  --orders-max-age-ms MS    retention of stream ORDERS when this host creates it\n"
            "                            (default 604800000 = 7 days, 0: unlimited)\n"
            "  --orders-max-bytes BYTES  idem, size (default 2147483648, 0: unlimited)\n"
            "  --orders-replicas N       idem, copies on a JetStream cluster (default 1, 3 on\n"
            "                            three nodes); an existing stream keeps its own\n"
            "  --admin-listen ADDR:PORT  serve /admin/* and /metrics only there (the public\n"
            "                            listener then answers 404 for them)\n"
            "  --max-connections N       open connections of this host (default: descriptor\n"
            "                            limit - 256); near it idle keep-alive ones are shed\n"
            "  --max-connections-per-client N  per client address (default 0: no cap)\n"
            "  --test                    load and validate POLICY, compile the deduct and order\n"
            "                            scripts, print the verdict, exit\n"
            "  --trusted-proxy CIDR[,CIDR...]  peers whose X-User-Id and X-Forwarded-For are\n"
            "                            believed; repeatable (default 127.0.0.0/8,::1)\n"
            "  --allow-query-user        ?user= names the buyer (load tools, demo); without it\n"
            "                            a request with ?user= is 400\n"
            "  --max-events N            events this host holds (default 4096); PUT\n"
            "                            /admin/events of one more is refused (409)\n"
            "  --payment-token-file PATH bearer token of POST /v1/orders/{id}/pay, 16+ bytes\n"
            "                            (absent: payments answer 403)\n"
            "  --order-script PATH       Redis order-life script (default: order.lua next to\n"
            "                            the deduct script, else " SNATCH_DATA_DIR "/order.lua)\n"
            "  --expire-interval-ms MS   release expired holds every MS (default 1000, 0: off)\n"
            "  --stall-exit-ms MS        a loop thread stuck in one turn this long (an endless\n"
            "                            policy loop) makes the host exit with status 70, for\n"
            "                            its supervisor to restart it (default 10000, 0: never;\n"
            "                            else at least 1000)\n"
            "  --version                 print the version and exit\n"
            "  -h, --help                this text\n" AUTH_REDIS_USAGE AUTH_NATS_USAGE
            "\nSignals: HUP reloads the policy, deduct and order scripts (a broken one is refused\n"
            "and the old one keeps serving); TERM/INT stop accepting, finish in-flight sales,\n"
            "exit 0.\n");
}

static int parse_hostport(const char *s, const char **host_out, int *port, char *buf, size_t cap)
{
    if (util_parse_hostport(s, buf, cap, 1, port) != 0)
        return -1;
    *host_out = buf;
    return 0;
}

/* what: "admin" or "payment"; out holds cap bytes (the admin and the payment token alike). */
static int read_token_into(const char *path, const char *what, char *out, size_t cap,
                           size_t *out_len)
{
    size_t len;
    char *tok = util_read_file(path, &len);
    if (tok == NULL) {
        log_error("cannot read %s token file %s: %s", what, path, strerror(errno));
        return -1;
    }
    while (len > 0 && (tok[len - 1] == '\n' || tok[len - 1] == '\r' || tok[len - 1] == ' '))
        len--;
    if (len < ADMIN_TOKEN_MIN || len >= cap) {
        log_error("admin token in %s must be %d..255 bytes (it has %zu): a short "
                  "token can be guessed; e.g. head -c 24 /dev/urandom | base64 > %s\n",
                  path, ADMIN_TOKEN_MIN, len, path);
        free(tok);
        return -1;
    }
    memcpy(out, tok, len);
    out[len] = '\0';
    *out_len = len;
    free(tok);
    return 0;
}

static int read_token(const char *path, host_config_t *cfg)
{
    return read_token_into(path, "admin", cfg->admin_token, sizeof(cfg->admin_token),
                           &cfg->admin_token_len);
}

/* lua/order.lua, read at start and on SIGHUP: next to the deduct script unless --order-script. */
static char life_path[4096];
static const char *order_script_arg; /* --order-script, else found next to deduct.lua */

static int read_life_script(host_config_t *cfg, const char *path)
{
    char err[1024];
    if (path != NULL) {
        snprintf(life_path, sizeof(life_path), "%s", path);
    } else {
        /* Looked for as deduct.lua is (a --deduct copy elsewhere has none beside it). */
        const char *slash = strrchr(cfg->deduct_path, '/');
        size_t dir = slash ? (size_t)(slash - cfg->deduct_path + 1) : 0;
        snprintf(life_path, sizeof(life_path), "%.*sorder.lua", (int)dir, cfg->deduct_path);
        if (access(life_path, R_OK) != 0)
            snprintf(life_path, sizeof(life_path), "%s/order.lua", SNATCH_DATA_DIR);
        if (access(life_path, R_OK) != 0)
            snprintf(life_path, sizeof(life_path), "%s/lua/order.lua", SNATCH_SOURCE_DIR);
    }
    if (life_script_read(life_path, &host.life_src, host.life_sha, err, sizeof(err)) != 0) {
        log_error("order script refused: %s", err);
        return -1;
    }
    return 0;
}

/* SIGHUP: the new order.lua if it is good and differs from the one the workers have (host's,
 * then replaced: main thread only once they started). NULL: they keep theirs. what says why. */
static char *reload_life_script(char sha[41], const char **what)
{
    char err[1024];
    char *src = NULL;
    if (life_script_read(life_path, &src, sha, err, sizeof(err)) != 0) {
        log_error("reload: order script refused, the old one keeps serving: %s", err);
        *what = "refused";
        return NULL;
    }
    if (strcmp(sha, host.life_sha) == 0) {
        free(src);
        *what = "unchanged";
        return NULL;
    }
    *what = "new";
    return src;
}

static int check_policy(const char *path, char *err, size_t errlen)
{
    script_env_t env = {.host_id = host.cfg.host_id, .hosts = host.cfg.hosts};
    return script_check(path, &env, err, errlen);
}

/* The reconciliation thread: SIGHUP hands it the policy too. */
static reconciler_t *reconciler;

static void on_hup(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    char err[1024];
    if (check_policy(host.cfg.policy_path, err, sizeof(err)) != 0) {
        log_error("reload: policy %s refused, old policy keeps serving: %s", host.cfg.policy_path,
                  err);
        metrics_policy_reload(0);
        return;
    }
    char *deduct = util_read_file(host.cfg.deduct_path, NULL);
    if (deduct == NULL)
        log_warn("reload: cannot read %s, keeping the deduct script", host.cfg.deduct_path);
    char life_sha[41] = "";
    const char *life_what;
    char *life = reload_life_script(life_sha, &life_what);
    for (int i = 0; i < n_workers; i++)
        worker_post_reload(&workers[i], deduct, life, life_sha);
    reconciler_post_reload(reconciler);
    if (life != NULL) {
        free(host.life_src);
        host.life_src = life;
        memcpy(host.life_sha, life_sha, sizeof(host.life_sha));
    }
    log_info(
        "reload: policy %s, deduct script %s (%s), order script %s (%s, serving sha1 %s) handed "
        "to %d threads",
        host.cfg.policy_path, host.cfg.deduct_path, deduct ? "read" : "kept", life_path, life_what,
        host.life_sha, n_workers);
    free(deduct);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    (void)h;
    log_info("%s: stopping (finishing in-flight requests)",
             signum == SIGTERM ? "SIGTERM" : "SIGINT");
    atomic_store(&host.stopping, true);
    for (int i = 0; i < n_workers; i++)
        worker_post_stop(&workers[i]);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
}

enum {
    OPT_LISTEN = 256,
    OPT_THREADS,
    OPT_REDIS,
    OPT_REDIS_TIMEOUT,
    OPT_REDIS_REPLICAS,
    OPT_NATS,
    OPT_ACK_TIMEOUT,
    OPT_MAX_INFLIGHT,
    OPT_HOST_ID,
    OPT_HOSTS,
    OPT_TOKEN,
    OPT_DEDUCT,
    OPT_MAX_HEAD,
    OPT_MAX_BODY,
    OPT_IDLE,
    OPT_HEADER_TIMEOUT,
    OPT_TEST,
    OPT_VERSION,
    OPT_LOG_FORMAT,
    OPT_RECONCILE_INTERVAL,
    OPT_REDIS_REPAIR,
    OPT_RECONCILE_AFTER,
    OPT_RATE_LIMIT_KEYS,
    OPT_ORDERS_MAX_AGE,
    OPT_ORDERS_MAX_BYTES,
    OPT_ORDERS_REPLICAS,
    OPT_TRUSTED_PROXY,
    OPT_ALLOW_QUERY_USER,
    OPT_MAX_EVENTS,
    OPT_ADMIN_LISTEN,
    OPT_MAX_CONNS,
    OPT_MAX_CONNS_CLIENT,
    OPT_PAYMENT_TOKEN,
    OPT_ORDER_SCRIPT,
    OPT_EXPIRE_INTERVAL,
    OPT_STALL_EXIT,
};

static int parse_args(int argc, char **argv, bool *test_only)
{
    static char listen_buf[256], redis_buf[256], admin_buf[256];
    static cluster_seed_t redis_seeds[REDIS_SEEDS_MAX];
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"redis", required_argument, NULL, OPT_REDIS},
        {"redis-timeout-ms", required_argument, NULL, OPT_REDIS_TIMEOUT},
        {"redis-replicas", required_argument, NULL, OPT_REDIS_REPLICAS},
        {"nats", required_argument, NULL, OPT_NATS},
        {"ack-timeout-ms", required_argument, NULL, OPT_ACK_TIMEOUT},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"host-id", required_argument, NULL, OPT_HOST_ID},
        {"hosts", required_argument, NULL, OPT_HOSTS},
        {"admin-token-file", required_argument, NULL, OPT_TOKEN},
        {"deduct", required_argument, NULL, OPT_DEDUCT},
        {"max-head", required_argument, NULL, OPT_MAX_HEAD},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"idle-timeout-ms", required_argument, NULL, OPT_IDLE},
        {"header-timeout-ms", required_argument, NULL, OPT_HEADER_TIMEOUT},
        {"test", no_argument, NULL, OPT_TEST},
        {"reconcile-interval-ms", required_argument, NULL, OPT_RECONCILE_INTERVAL},
        {"redis-repair", no_argument, NULL, OPT_REDIS_REPAIR},
        {"reconcile-after-ms", required_argument, NULL, OPT_RECONCILE_AFTER},
        {"rate-limit-keys", required_argument, NULL, OPT_RATE_LIMIT_KEYS},
        {ORDERS_MAX_AGE_FLAG, required_argument, NULL, OPT_ORDERS_MAX_AGE},
        {ORDERS_MAX_BYTES_FLAG, required_argument, NULL, OPT_ORDERS_MAX_BYTES},
        {ORDERS_REPLICAS_FLAG, required_argument, NULL, OPT_ORDERS_REPLICAS},
        {"version", no_argument, NULL, OPT_VERSION},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"help", no_argument, NULL, 'h'},
        {"trusted-proxy", required_argument, NULL, OPT_TRUSTED_PROXY},
        {"allow-query-user", no_argument, NULL, OPT_ALLOW_QUERY_USER},
        {"max-events", required_argument, NULL, OPT_MAX_EVENTS},
        {"admin-listen", required_argument, NULL, OPT_ADMIN_LISTEN},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
        {"max-connections-per-client", required_argument, NULL, OPT_MAX_CONNS_CLIENT},
        {"payment-token-file", required_argument, NULL, OPT_PAYMENT_TOKEN},
        {"order-script", required_argument, NULL, OPT_ORDER_SCRIPT},
        {"expire-interval-ms", required_argument, NULL, OPT_EXPIRE_INTERVAL},
        {"stall-exit-ms", required_argument, NULL, OPT_STALL_EXIT},
        AUTH_REDIS_OPTIONS,
        AUTH_NATS_OPTIONS,
        {NULL, 0, NULL, 0}};
    host_config_t *cfg = &host.cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->listen_addr = "127.0.0.1";
    cfg->listen_port = 8080;
    cfg->threads = cpus > 0 ? (int)(cpus < MAX_THREADS ? cpus : MAX_THREADS) : 2;
    cfg->redis_host = "127.0.0.1";
    cfg->redis_port = 6379;
    cfg->redis_seeds = "127.0.0.1:6379";
    cfg->redis_replicas = -1;
    cfg->redis_timeout_ms = 1000;
    cfg->nats_url = "nats://127.0.0.1:4222";
    cfg->ack_timeout_ms = 5000;
    cfg->max_inflight = 4096;
    cfg->hosts = 1;
    if (gethostname(host_id_buf, sizeof(host_id_buf) - 1) != 0 ||
        !util_valid_name(host_id_buf, strlen(host_id_buf), SNATCH_NAME_MAX))
        strcpy(host_id_buf, "host");
    cfg->host_id = host_id_buf;
    trust_default(&cfg->trusted_proxies);
    const char *token_path = NULL, *payment_path = NULL;
    bool trusted_given = false;
    cfg->expire_interval_ms = 1000;
    int c;
    int64_t v;
    char err[256];
    cli_init();
    while ((c = getopt_long(argc, argv, CLI_OPTSTRING "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN:
            if (parse_hostport(optarg, &cfg->listen_addr, &cfg->listen_port, listen_buf,
                               sizeof(listen_buf)) != 0) {
                fprintf(stderr, "snatch-host: --listen wants ADDR:PORT\n");
                return -1;
            }
            break;
        case OPT_THREADS:
            if (cli_int_opt("snatch-host", "--threads", optarg, 1, MAX_THREADS, &v))
                return -1;
            cfg->threads = (int)v;
            break;
        case OPT_REDIS:
            if (cluster_parse_seeds(optarg, redis_seeds, REDIS_SEEDS_MAX) < 1) {
                fprintf(stderr, "snatch-host: --redis wants HOST:PORT[,HOST:PORT...] (numeric "
                                "addresses)\n");
                return -1;
            }
            snprintf(redis_buf, sizeof(redis_buf), "%s", redis_seeds[0].host);
            cfg->redis_host = redis_buf;
            cfg->redis_port = redis_seeds[0].port;
            cfg->redis_seeds = optarg;
            break;
        case OPT_REDIS_REPLICAS:
            if (cli_int_opt("snatch-host", "--redis-replicas", optarg, 0, 16, &v))
                return -1;
            cfg->redis_replicas = (int)v;
            break;
        case OPT_REDIS_TIMEOUT:
            if (cli_int_opt("snatch-host", "--redis-timeout-ms", optarg, 1, 600000, &v))
                return -1;
            cfg->redis_timeout_ms = (uint64_t)v;
            break;
        case OPT_NATS:
            if (nats_servers_check(optarg, err, sizeof(err)) != 0) {
                cli_usage_error("snatch-host", "%s", err);
                return -1;
            }
            cfg->nats_url = optarg;
            break;
        case OPT_ACK_TIMEOUT:
            if (cli_int_opt("snatch-host", "--ack-timeout-ms", optarg, 1, 600000, &v))
                return -1;
            cfg->ack_timeout_ms = (uint64_t)v;
            break;
        case OPT_MAX_INFLIGHT:
            if (cli_int_opt("snatch-host", "--max-inflight", optarg, 1, 1000000, &v))
                return -1;
            cfg->max_inflight = (unsigned)v;
            break;
        case OPT_HOST_ID:
            if (!util_valid_name(optarg, strlen(optarg), SNATCH_NAME_MAX)) {
                fprintf(stderr, "snatch-host: --host-id must be 1..64 of [A-Za-z0-9_.:@-]\n");
                return -1;
            }
            cfg->host_id = optarg;
            break;
        case OPT_HOSTS:
            if (cli_int_opt("snatch-host", "--hosts", optarg, 1, 10000, &v))
                return -1;
            cfg->hosts = (int)v;
            break;
        case OPT_TOKEN:
            token_path = optarg;
            break;
        case OPT_DEDUCT:
            cfg->deduct_path = optarg;
            break;
        case OPT_REDIS_REPAIR:
            redis_repair = true;
            break;
        case OPT_MAX_HEAD:
            if (cli_int_opt("snatch-host", "--max-head", optarg, 256, 1 << 20, &v))
                return -1;
            cfg->http.max_head_bytes = (size_t)v;
            break;
        case OPT_MAX_BODY:
            if (cli_int_opt("snatch-host", "--max-body", optarg, 0, 64 << 20, &v))
                return -1;
            cfg->http.max_body_bytes = (size_t)v;
            break;
        case OPT_IDLE:
            if (cli_int_opt("snatch-host", "--idle-timeout-ms", optarg, 1, 3600000, &v))
                return -1;
            cfg->http.idle_timeout_ms = (uint64_t)v;
            break;
        case OPT_HEADER_TIMEOUT:
            if (cli_int_opt("snatch-host", "--header-timeout-ms", optarg, 1, 3600000, &v))
                return -1;
            cfg->http.header_timeout_ms = (uint64_t)v;
            break;
        case OPT_TEST:
            *test_only = true;
            break;
        case OPT_RECONCILE_INTERVAL:
            if (cli_int_opt("snatch-host", "--reconcile-interval-ms", optarg, 0, 3600000, &v))
                return -1;
            reconcile_interval_ms = (uint64_t)v;
            break;
        case OPT_RATE_LIMIT_KEYS:
            if (cli_int_opt("snatch-host", "--rate-limit-keys", optarg, 64, 1 << 26,
                            &rate_limit_keys))
                return -1;
            break;
        case OPT_RECONCILE_AFTER:
            if (cli_int_opt("snatch-host", "--reconcile-after-ms", optarg, 1, 86400000, &v))
                return -1;
            reconcile_after_ms = v;
            break;
        case OPT_ORDERS_MAX_AGE:
            if (orders_stream_set_max_age_ms(optarg, err, sizeof(err)) != 0) {
                cli_usage_error("snatch-host", "%s", err);
                return -1;
            }
            break;
        case OPT_ORDERS_MAX_BYTES:
            if (orders_stream_set_max_bytes(optarg, err, sizeof(err)) != 0) {
                cli_usage_error("snatch-host", "%s", err);
                return -1;
            }
            break;
        case OPT_ORDERS_REPLICAS:
            if (orders_stream_set_replicas(optarg, err, sizeof(err)) != 0) {
                cli_usage_error("snatch-host", "%s", err);
                return -1;
            }
            break;
        case OPT_TRUSTED_PROXY:
            if (!trusted_given)
                cfg->trusted_proxies.n = 0; /* the first one replaces the loopback default */
            trusted_given = true;
            if (trust_parse(&cfg->trusted_proxies, optarg) != 0) {
                fprintf(stderr,
                        "snatch-host: --trusted-proxy %s: want CIDRs or addresses, comma "
                        "separated (10.0.0.0/8,::1), no host bits set, at most %d in all\n",
                        optarg, TRUST_MAX);
                return -1;
            }
            break;
        case OPT_ALLOW_QUERY_USER:
            cfg->allow_query_user = true;
            break;
        case OPT_MAX_EVENTS:
            if (cli_int_opt("snatch-host", "--max-events", optarg, 1, STOCK_EVENTS_LIMIT,
                            &max_events))
                return -1;
            break;
        case OPT_ADMIN_LISTEN:
            if (parse_hostport(optarg, &cfg->admin_listen_addr, &cfg->admin_listen_port, admin_buf,
                               sizeof(admin_buf)) != 0) {
                fprintf(stderr, "snatch-host: --admin-listen wants ADDR:PORT\n");
                return -1;
            }
            break;
        case OPT_PAYMENT_TOKEN:
            payment_path = optarg;
            break;
        case OPT_ORDER_SCRIPT:
            order_script_arg = optarg;
            break;
        case OPT_EXPIRE_INTERVAL:
            if (cli_int_opt("snatch-host", "--expire-interval-ms", optarg, 0, 3600000, &v))
                return -1;
            cfg->expire_interval_ms = (uint64_t)v;
            break;
        case OPT_STALL_EXIT:
            if (cli_int_opt("snatch-host", "--stall-exit-ms", optarg, 0, 86400000, &stall_exit_ms))
                return -1;
            if (stall_exit_ms != 0 && stall_exit_ms < STALL_THRESHOLD_MS) {
                cli_usage_error("snatch-host", "--stall-exit-ms is 0 (never) or at least %d",
                                STALL_THRESHOLD_MS);
                return -1;
            }
            break;
        case OPT_MAX_CONNS:
            if (cli_int_opt("snatch-host", "--max-connections", optarg, 1, 1 << 24, &max_conns))
                return -1;
            break;
        case OPT_MAX_CONNS_CLIENT:
            if (cli_int_opt("snatch-host", "--max-connections-per-client", optarg, 0, 1 << 24,
                            &max_per_client))
                return -1;
            break;
        case OPT_LOG_FORMAT:
            if (log_parse_format(optarg, &log_format) != 0) {
                fprintf(stderr, "snatch-host: --log-format must be text or json\n");
                return -1;
            }
            break;
        case OPT_VERSION:
            cli_print_version("snatch-host");
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            switch (auth_parse_opt(&cfg->auth, c, optarg, "snatch-host")) {
            case 0:
                break;
            case 1:
                cli_bad_option("snatch-host", c, argv);
                return -1;
            default:
                return -1;
            }
            break;
            return -1;
        }
    }
    if (auth_check(&cfg->auth, "snatch-host") != 0)
        return -1;
    if (optind != argc - 1) {
        if (optind == argc)
            cli_usage_error("snatch-host", "missing POLICY.lua");
        else
            cli_usage_error("snatch-host", "one POLICY.lua expected, got %d", argc - optind);
        return -1;
    }
    cfg->policy_path = argv[optind];
    if (cfg->deduct_path == NULL) {
        const char *slash = strrchr(cfg->policy_path, '/');
        size_t dir = slash ? (size_t)(slash - cfg->policy_path + 1) : 0;
        snprintf(deduct_buf, sizeof(deduct_buf), "%.*sdeduct.lua", (int)dir, cfg->policy_path);
        /* A policy kept elsewhere (/etc/snatch/policy.lua) still finds the installed script;
         * the source tree is the last resort of a binary run from its build directory. */
        if (access(deduct_buf, R_OK) != 0)
            snprintf(deduct_buf, sizeof(deduct_buf), "%s/deduct.lua", SNATCH_DATA_DIR);
        if (access(deduct_buf, R_OK) != 0)
            snprintf(deduct_buf, sizeof(deduct_buf), "%s/lua/deduct.lua", SNATCH_SOURCE_DIR);
        cfg->deduct_path = deduct_buf;
    }
    if (token_path != NULL && read_token(token_path, cfg) != 0)
        return -1;
    if (payment_path != NULL &&
        read_token_into(payment_path, "payment", cfg->payment_token, sizeof(cfg->payment_token),
                        &cfg->payment_token_len) != 0)
        return -1;
    return 0;
}

/* deduct.lua is loaded into Redis by every connection; one that does not compile would be
 * refused there at each attempt while every sale answered 503. So the start (and --test) stop
 * on it first, as for order.lua (same check: LuaJIT parses the Lua 5.1 Redis runs). A SIGHUP's
 * new one is judged by Redis itself (the old one keeps serving). */
static int check_deduct_script(const char *path)
{
    char err[1024], sha[41];
    char *src = NULL;
    if (life_script_read(path, &src, sha, err, sizeof(err)) != 0) {
        log_error("deduct script refused: %s", err);
        return -1;
    }
    free(src);
    return 0;
}

/* lua/repair.lua: next to the deduct script, else installed, else the source tree. Without it
 * nothing is repaired: an event whose Redis node changed keeps answering 503 repairing
 * (deduct.lua's gate), which is safe but stuck. */
static void load_repair_script(const char *deduct_path, const char *seeds)
{
    char path[4096];
    const char *slash = strrchr(deduct_path, '/');
    size_t dir = slash ? (size_t)(slash - deduct_path + 1) : 0;
    snprintf(path, sizeof(path), "%.*srepair.lua", (int)dir, deduct_path);
    /* A deduct script of one's own (/etc/snatch) still finds the installed repair script. */
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof(path), "%s/repair.lua", SNATCH_DATA_DIR);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof(path), "%s/lua/repair.lua", SNATCH_SOURCE_DIR);
    char *src = util_read_file(path, NULL);
    if (src == NULL) {
        log_error("cannot read %s: events are not repaired after a Redis failover (they answer "
                  "503 repairing until it is there and the host restarted)",
                  path);
        return;
    }
    if (repair_configure(src, redis_repair, seeds) != 0)
        log_error("repair: cannot configure (seeds %s): events are not repaired", seeds);
    free(src);
}

/* Refuses a port another process serves: the workers bind with SO_REUSEPORT, which would
 * silently share it with a second snatch-host (and split its buyers between two hosts). */
static int check_port_free(const char *what, const char *addr, int port)
{
    int rc = http_probe_port(addr, port);
    if (rc == 0)
        return 0;
    log_error("%s %s:%d: %s%s", what, addr, port, uv_strerror(rc),
              rc == UV_EADDRINUSE ? " (another process, perhaps a snatch-host, serves it)" : "");
    return -1;
}

/* Raises the soft descriptor limit to the hard one (each connection is a descriptor) and sets
 * the connection caps under it. */
static int setup_connections(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("descriptor limit raised from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_max);
        else
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (max_conns == 0) {
        rlim_t n = rl.rlim_cur > 2 * FD_RESERVE ? rl.rlim_cur - FD_RESERVE : rl.rlim_cur / 2;
        max_conns = n > (1 << 24) ? (1 << 24) : (int64_t)n;
    } else if ((rlim_t)max_conns + FD_RESERVE > rl.rlim_cur) {
        log_warn("--max-connections %lld is above the descriptor limit "
                 "%llu less %d reserved: accepts may fail before the cap",
                 (long long)max_conns, (unsigned long long)rl.rlim_cur, FD_RESERVE);
    }
    host.cfg.http.limits = http_limits_new((size_t)max_conns, (unsigned)max_per_client);
    if (!host.cfg.http.limits) {
        log_error("out of memory");
        return -1;
    }
    log_info("at most %lld connections, %lld per client address%s", (long long)max_conns,
             (long long)max_per_client, max_per_client ? "" : " (no cap)");
    if (check_port_free("listen", host.cfg.listen_addr, host.cfg.listen_port) != 0)
        return -1;
    if (host.cfg.admin_listen_addr && host.cfg.admin_listen_port == host.cfg.listen_port) {
        fprintf(stderr, "snatch-host: --admin-listen needs a port of its own\n");
        return -1;
    }
    if (host.cfg.admin_listen_addr && check_port_free("admin listen", host.cfg.admin_listen_addr,
                                                      host.cfg.admin_listen_port) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    bool test_only = false;
    char err[1024];
    /* libcrypto's first initialisation decides whether it cleans up at exit, and that cleanup
     * frees what cnats (with TLS) already freed: SSL's compression-method list, which cnats
     * frees when its library closes (ASan: a crash in OPENSSL_cleanup at exit, test_auth's
     * nats_tls). The host's own uses (order.lua's SHA1, the policy's HMAC) must not initialise
     * it first with that cleanup. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
    log_init("snatch-host", LOG_FORMAT_TEXT);
    if (parse_args(argc, argv, &test_only) != 0)
        return 2;
    log_init("snatch-host", log_format);
    /* Before the first policy call: host.limit() would otherwise size the table by default. */
    if (ratelimit_init((size_t)rate_limit_keys) != 0) {
        log_error("cannot allocate the rate limiter");
        return 1;
    }
    if (check_policy(host.cfg.policy_path, err, sizeof(err)) != 0) {
        log_error("policy %s: %s", host.cfg.policy_path, err);
        return 1;
    }
    if (check_deduct_script(host.cfg.deduct_path) != 0 ||
        read_life_script(&host.cfg, order_script_arg) != 0)
        return 1;
    if (test_only) {
        printf("snatch-host: policy %s is valid; deduct script %s and order script %s compile\n",
               host.cfg.policy_path, host.cfg.deduct_path, life_path);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    if (setup_connections() != 0)
        return 1;
    if (stock_init_max((size_t)max_events) != 0) {
        log_error("cannot allocate the event table");
        return 1;
    }
    metrics_init();
    script_set_counter(metrics_lua_counter);
    metrics_thread_register();
    if (orders_publisher_start_auth(&host.orders, host.cfg.nats_url, &host.cfg.auth, err,
                                    sizeof(err)) != 0) {
        log_error("nats: %s", err);
        return 1;
    }
    if ((int64_t)host.cfg.ack_timeout_ms >= reconcile_after_ms)
        log_warn("--reconcile-after-ms (%lld) should exceed "
                 "--ack-timeout-ms (%llu), or orders still awaiting their ack get "
                 "republished (harmless: de-duplicated, but wasted)",
                 (long long)reconcile_after_ms, (unsigned long long)host.cfg.ack_timeout_ms);
    load_repair_script(host.cfg.deduct_path, host.cfg.redis_seeds);
    if (reconcile_interval_ms > 0 &&
        reconciler_start(&reconciler, host.cfg.redis_seeds, host.cfg.nats_url,
                         reconcile_interval_ms, reconcile_after_ms, &host.cfg.auth,
                         host.cfg.policy_path, host.cfg.host_id, host.cfg.hosts) != 0) {
        log_error("cannot start the reconciliation thread");
        return 1;
    }
    /* Handlers before the first listener: a HUP sent as soon as the port answers must reload,
     * not kill (its default action). They run once the loop below runs. */
    uv_loop_t *loop = uv_default_loop();
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);
    uv_signal_start(&sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&sig_int, on_stop_signal, SIGINT);
    /* Before the workers: a thread stuck in its very first turn is caught too. */
    if (stallwatch_start((uint64_t)stall_exit_ms) != 0)
        return 1;
    int status = 0;
    for (n_workers = 0; n_workers < host.cfg.threads; n_workers++) {
        if (worker_start(&workers[n_workers], &host, n_workers) != 0) {
            status = 1;
            break;
        }
    }
    if (status == 0) {
        log_info("snatch-host %s: serving http://%s:%d with %d threads, host %s of %d, "
                 "redis %s, nats %s, policy %s",
                 SNATCH_VERSION, host.cfg.listen_addr, host.cfg.listen_port, n_workers,
                 host.cfg.host_id, host.cfg.hosts, host.cfg.redis_seeds, host.cfg.nats_url,
                 host.cfg.policy_path);
        uv_run(loop, UV_RUN_DEFAULT);
    } else {
        for (int i = 0; i < n_workers; i++)
            worker_post_stop(&workers[i]);
        uv_close((uv_handle_t *)&sig_hup, NULL);
        uv_close((uv_handle_t *)&sig_term, NULL);
        uv_close((uv_handle_t *)&sig_int, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
    }
    for (int i = 0; i < n_workers; i++)
        worker_join(&workers[i]);
    stallwatch_stop();
    /* Workers are gone: wait briefly for acks still on the wire, then close NATS. */
    orders_publisher_stop(host.orders, 2000);
    reconciler_stop(reconciler);
    nats_Close();
    uv_loop_close(loop);
    ratelimit_shutdown();
    stock_shutdown();
    http_limits_free(host.cfg.http.limits);
    auth_free(&host.cfg.auth);
    free(host.life_src);
    log_info("stopped");
    return status;
}
