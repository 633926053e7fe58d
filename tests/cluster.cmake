# Redis Cluster: host/common/cluster_slots.c (pure: slot function, slot map, redirections).
add_snatch_unit_test(test_cluster_slots ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_slots.c
  LIBS snatch_common)
