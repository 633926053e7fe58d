# host/server/http.c: the HTTP/1.1 server, linked from snatch_server as snatch-host links it; the
# parse errors it counts are read back from metrics.c.
add_snatch_unit_test(test_http ${CMAKE_SOURCE_DIR}/tests/unit/test_http.c LIBS snatch_server)
