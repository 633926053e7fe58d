# Redis Cluster: host/common/cluster_slots.c (pure: slot function, slot map, redirections).
add_snatch_unit_test(test_cluster_slots ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_slots.c
  LIBS snatch_common)
# host/server/redis.c (the router) against a real 6-node Redis Cluster (tests/unit/redis_server.h).
add_snatch_unit_test(test_redis_cluster ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_redis_cluster.c
  LIBS snatch_server)
# Three hosts and snatch-reconcile on a real Redis Cluster (tests/integration/harness.py).
add_snatch_py_test(cluster_sale integration/test_cluster_sale.py TIMEOUT 300)
