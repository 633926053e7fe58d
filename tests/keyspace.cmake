# host/common/keyspace.c: every Redis key name and the order id's layout.
add_snatch_unit_test(test_keyspace ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_keyspace.c LIBS snatch_common)
# {E}:orders values (compact or JSON) read back as the order's JSON.
add_snatch_unit_test(test_order_record ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_order_record.c
  LIBS snatch_common)
