# host/common/log.c: line format, JSON escaping, cutting, concurrent writers.
add_snatch_unit_test(test_log ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_log.c LIBS snatch_common)
