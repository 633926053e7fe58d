# host/server/stock.c and host/common/util.c: local quota under concurrent threads, input checks.
add_snatch_unit_test(test_stock ${CMAKE_SOURCE_DIR}/tests/unit/test_stock.c LIBS snatch_server)
# host/server/trust.c: --trusted-proxy ranges and the X-Forwarded-For client address.
add_snatch_unit_test(test_trust ${CMAKE_SOURCE_DIR}/tests/unit/test_trust.c LIBS snatch_server)
