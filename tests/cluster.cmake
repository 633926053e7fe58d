# Redis Cluster: host/common/cluster_slots.c (pure: slot function, slot map, redirections).
add_snatch_unit_test(test_cluster_slots ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_slots.c
  LIBS snatch_common)
# host/server/redis.c (the router) against a real 6-node Redis Cluster (tests/unit/redis_server.h).
add_snatch_unit_test(test_redis_cluster ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_redis_cluster.c
  LIBS snatch_server snatch_test_loop)
# The router when every master it knew is gone at once (replicas taken over): found again
# through the seeds, or the replicas of its last map.
add_snatch_unit_test(test_redis_cluster_fallback
  ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_redis_cluster_fallback.c
  LIBS snatch_server snatch_test_loop)
# Three hosts and snatch-reconcile on a real Redis Cluster (tests/integration/harness.py).
add_snatch_py_test(cluster_sale integration/test_cluster_sale.py TIMEOUT 300)
# Issue 11, operations: examples/nginx/snatch.conf run as shipped in front of real hosts (values
# against the host's deadlines, a verified sale, a sent POST never retried, X-Forwarded-For and
# X-User-Id behind it).
add_snatch_py_test(nginx integration/test_nginx.py TIMEOUT 120)
# Issue 11, the cluster fault suite: Redis Cluster (3+3), JetStream cluster (3), three hosts
# behind nginx; kill -9 of the event's Redis master (also never restarted, on 3+6), of the ORDERS
# stream leader, of a host; a rolling SIGTERM restart of every node; the event's master cut off by
# nftables (alone, and split brain); scripts/cluster.sh (1 and 2 replicas per master). Fails on a
# snatch-host without the cluster flags.
add_snatch_py_test(cluster_faults integration/test_cluster_faults.py TIMEOUT 600)
set_tests_properties(cluster_faults PROPERTIES RUN_SERIAL TRUE)
# host/common/cluster_sync.c's redirection bounds against a scripted fake node (exact counts of
# TRYAGAIN, MOVED), whatever the machine's load.
add_snatch_unit_test(test_cluster_sync ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_sync.c
  LIBS snatch_common)
# host/server/redis.c's answer to a request that never ran (CLUSTERDOWN, a redirection loop) in
# and out of a cluster transition, against a scripted fake node (exact counts of tries).
add_snatch_unit_test(test_redis_hold ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_redis_hold.c
  LIBS snatch_server)
