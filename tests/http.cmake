# host/server/http.c: the HTTP/1.1 server. The test links snatch_server as snatch-host does; it
# defines metrics_http_error itself (counting it), so metrics.c is not pulled from the library.
add_snatch_unit_test(test_http ${CMAKE_SOURCE_DIR}/tests/unit/test_http.c LIBS snatch_server)
