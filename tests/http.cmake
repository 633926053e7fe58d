# host/http.c: the HTTP/1.1 server. The test links http.c alone (it counts metrics_http_error
# itself) so that it builds while other modules of snatch_core are in progress.
add_snatch_unit_test(test_http
  ${CMAKE_SOURCE_DIR}/tests/unit/test_http.c ${CMAKE_SOURCE_DIR}/host/http.c
  LIBS snatch_base PkgConfig::UV ${HTTP_PARSER_LIB} Threads::Threads)
target_include_directories(test_http PRIVATE ${CMAKE_SOURCE_DIR}/host ${HTTP_PARSER_INCLUDE})
