# host/log.c: line format, JSON escaping, cutting, concurrent writers.
add_snatch_unit_test(test_log ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_log.c
  ${CMAKE_SOURCE_DIR}/host/log.c LIBS PkgConfig::JANSSON Threads::Threads)
target_include_directories(test_log PRIVATE ${CMAKE_SOURCE_DIR}/host)
