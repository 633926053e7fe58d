# host/redis.c against real redis-server processes. Links redis.c alone (the test counts
# metrics_redis_rtt itself) so it builds while other modules of snatch_core are in progress.
add_snatch_unit_test(test_redis
  ${CMAKE_SOURCE_DIR}/tests/unit/test_redis.c ${CMAKE_SOURCE_DIR}/host/redis.c
  LIBS snatch_base PkgConfig::UV PkgConfig::HIREDIS)
target_include_directories(test_redis PRIVATE ${CMAKE_SOURCE_DIR}/host)
target_compile_definitions(test_redis PRIVATE SNATCH_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
