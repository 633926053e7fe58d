# host/stock.c and host/util.c: local quota under concurrent threads, input checks.
add_snatch_unit_test(test_stock ${CMAKE_SOURCE_DIR}/tests/unit/test_stock.c
  ${CMAKE_SOURCE_DIR}/host/stock.c ${CMAKE_SOURCE_DIR}/host/util.c
  LIBS PkgConfig::UV Threads::Threads)
target_include_directories(test_stock PRIVATE ${CMAKE_SOURCE_DIR}/host)

# host/trust.c: --trusted-proxy ranges and the X-Forwarded-For client address.
add_snatch_unit_test(test_trust ${CMAKE_SOURCE_DIR}/tests/unit/test_trust.c
  ${CMAKE_SOURCE_DIR}/host/trust.c ${CMAKE_SOURCE_DIR}/host/util.c)
target_include_directories(test_trust PRIVATE ${CMAKE_SOURCE_DIR}/host)
