# host/http.c: the HTTP/1.1 server. The test links http.c alone (it counts metrics_http_error
# itself) so that it builds while other modules of snatch_core are in progress.
add_snatch_unit_test(test_http
  ${CMAKE_SOURCE_DIR}/tests/unit/test_http.c ${CMAKE_SOURCE_DIR}/host/http.c
  LIBS PkgConfig::UV ${HTTP_PARSER_LIB} Threads::Threads)
target_include_directories(test_http PRIVATE ${CMAKE_SOURCE_DIR}/host ${HTTP_PARSER_INCLUDE})

# libFuzzer target for the parser/connection code (clang only): -DFUZZ=ON -DCMAKE_C_COMPILER=clang.
# fuzz_http_smoke runs it briefly over the seed corpus; new inputs go to the build directory, the
# seeds in the source tree stay untouched.
option(FUZZ "Build libFuzzer targets (needs clang)" OFF)
if(FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "FUZZ=ON needs clang: add -DCMAKE_C_COMPILER=clang")
  endif()
  add_executable(fuzz_http
    ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_http.c ${CMAKE_SOURCE_DIR}/host/http.c)
  target_include_directories(fuzz_http PRIVATE ${CMAKE_SOURCE_DIR}/host ${HTTP_PARSER_INCLUDE})
  target_compile_options(fuzz_http PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_http PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_http PRIVATE PkgConfig::UV ${HTTP_PARSER_LIB})
  file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/fuzz_http_corpus)
  add_test(NAME fuzz_http_smoke COMMAND fuzz_http -runs=3000 -max_len=4096
    ${CMAKE_CURRENT_BINARY_DIR}/fuzz_http_corpus ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus_http)
  set_tests_properties(fuzz_http_smoke PROPERTIES TIMEOUT 300)
endif()
