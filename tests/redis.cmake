# host/server/redis.c against real redis-server processes; links snatch_server as snatch-host
# does (round trips are read back from metrics.c).
add_snatch_unit_test(test_redis ${CMAKE_SOURCE_DIR}/tests/unit/test_redis.c
  LIBS snatch_server snatch_test_loop)
