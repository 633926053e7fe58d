# host/server/stock.c and host/common/util.c: local quota under concurrent threads, input checks.
add_snatch_unit_test(test_stock ${CMAKE_SOURCE_DIR}/tests/unit/test_stock.c LIBS snatch_server)
# host/server/trust.c: --trusted-proxy ranges and the X-Forwarded-For client address.
add_snatch_unit_test(test_trust ${CMAKE_SOURCE_DIR}/tests/unit/test_trust.c LIBS snatch_server)
# host/server/caller.c: the buyer (X-User-Id from trusted peers, ?user= when allowed) and the
# client address behind trusted proxies, on requests built by hand.
add_snatch_unit_test(test_caller ${CMAKE_SOURCE_DIR}/tests/unit/test_caller.c LIBS snatch_server)
