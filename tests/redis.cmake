# host/server/redis.c against real redis-server processes. Links snatch_server; the test counts
# metrics_redis_rtt and metrics_backend_error itself (so metrics.c is not pulled in).
add_snatch_unit_test(test_redis ${CMAKE_SOURCE_DIR}/tests/unit/test_redis.c LIBS snatch_server)
