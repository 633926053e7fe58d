# host/common/keyspace.c: every Redis key name and the order id's layout.
add_snatch_unit_test(test_keyspace ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_keyspace.c LIBS snatch_common)
