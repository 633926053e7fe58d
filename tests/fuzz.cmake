# libFuzzer targets (clang only): cmake -DFUZZ=ON -DCMAKE_C_COMPILER=clang. Build only the fuzz
# targets in that directory (scripts/test.sh does): the rest of the tree is not its concern.
#   fuzz_http        host/server/http.c over real loopback TCP: parsing, pipelining, keep-alive, closing
#   fuzz_admin_body  api_parse_event_body() and admin_parse_patch_body(), the PUT and PATCH
#                    /admin/events/{e} bodies
# fuzz_<t>_smoke runs each briefly (about a minute for both) over the seed corpus and replays every
# crash kept under tests/fuzz/regressions/<t>/. libFuzzer writes new inputs only to its first corpus
# directory, which is in the build tree; the seed and regression directories in the source tree are
# passed after it and only read. Longer runs: scripts/fuzz.sh.
option(FUZZ "Build libFuzzer targets (needs clang)" OFF)
if(FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "FUZZ=ON needs clang: add -DCMAKE_C_COMPILER=clang")
  endif()
  set(FUZZ_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz)
  # UBSan must abort, or libFuzzer never sees the finding.
  set(FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
    -fno-omit-frame-pointer)
  set(FUZZ_SMOKE_SECONDS 25)

  # fuzz_target(name source... LIBS libs...): the sources are instrumented for coverage.
  function(fuzz_target name)
    cmake_parse_arguments(T "" "" "LIBS" ${ARGN})
    add_executable(${name} ${T_UNPARSED_ARGUMENTS})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/host/common
      ${CMAKE_SOURCE_DIR}/host/server ${HTTP_PARSER_INCLUDE})
    target_compile_options(${name} PRIVATE ${FUZZ_FLAGS})
    target_link_options(${name} PRIVATE ${FUZZ_FLAGS})
    target_link_libraries(${name} PRIVATE ${T_LIBS})
  endfunction()

  # fuzz_smoke(target short max_len): ctest fuzz_<short>_smoke.
  function(fuzz_smoke target short max_len)
    set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz/${short})
    file(MAKE_DIRECTORY ${work}/corpus ${work}/crashes)
    set(dirs ${work}/corpus ${FUZZ_DIR}/corpus_${short})
    # Checked at configure time: a new regression directory needs a cmake run (test.sh does one).
    if(IS_DIRECTORY ${FUZZ_DIR}/regressions/${short})
      list(APPEND dirs ${FUZZ_DIR}/regressions/${short})
    endif()
    add_test(NAME fuzz_${short}_smoke COMMAND ${target}
      -max_total_time=${FUZZ_SMOKE_SECONDS} -max_len=${max_len} -dict=${FUZZ_DIR}/${short}.dict
      -artifact_prefix=${work}/crashes/ -print_final_stats=1 ${dirs})
    set_tests_properties(fuzz_${short}_smoke PROPERTIES LABELS fuzz TIMEOUT 150 ENVIRONMENT
      "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1")
  endfunction()

  fuzz_target(fuzz_http ${FUZZ_DIR}/fuzz_http.c ${CMAKE_SOURCE_DIR}/host/server/http.c
    ${CMAKE_SOURCE_DIR}/host/common/log.c
    LIBS PkgConfig::UV ${HTTP_PARSER_LIB})
  fuzz_smoke(fuzz_http http 4096)

  # Only api.c is instrumented; the rest of the host comes from snatch_server as it is (the
  # library's own api.o is not pulled: the instrumented one defines every api_* name).
  fuzz_target(fuzz_admin_body ${FUZZ_DIR}/fuzz_admin_body.c ${CMAKE_SOURCE_DIR}/host/server/api.c
    ${CMAKE_SOURCE_DIR}/host/server/admin_events.c LIBS snatch_server)
  fuzz_smoke(fuzz_admin_body admin 1024)
endif()
