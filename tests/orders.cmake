# Order pipeline: host/server/orders.c (JetStream publishing) and snatch-subscriber /
# snatch-reconcile. The orders test links snatch_server as snatch-host does.
add_snatch_unit_test(test_orders ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_orders.c LIBS snatch_server)
target_include_directories(test_orders PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit)

# Test and benchmark helper (not a test): fills stream ORDERS with host-shaped orders.
add_executable(orders-fill ${CMAKE_CURRENT_SOURCE_DIR}/unit/orders_fill.c)
target_link_libraries(orders-fill PRIVATE snatch_common)
set_target_properties(orders-fill PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})

add_snatch_py_test(test_subscriber integration/test_subscriber.py TIMEOUT 300)
add_snatch_py_test(test_reconcile integration/test_reconcile.py TIMEOUT 240)

# store.c: the fast order scanner against the JSON parser (differential), idempotent inserts.
add_snatch_unit_test(test_store ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_store.c LIBS snatch_store)

# fetch.c: the subscriber's pull never returns more than its batch (cnats 3.4.1's Fetch overflows
# its array when messages already wait in the subscription), against a real nats-server.
add_snatch_unit_test(test_fetch ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_fetch.c LIBS snatch_fetch)
target_include_directories(test_fetch PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit)

# Credentials for Redis (requirepass, ACL user) and NATS (user/password, token, TLS with a CA):
# host, subscriber and snatch-reconcile against servers started with them; wrong ones -> 503.
add_snatch_py_test(test_auth integration/test_auth.py TIMEOUT 180)

# Order life (lua/order.lua, host/server/life.c): holds paid, cancelled, expired and sold again,
# exactly one transition winning races, idempotent snatch retries to two hosts, the subscriber's
# out-of-order transitions, hosts killed with -9 while releasing expired holds.
add_snatch_py_test(test_order_life integration/test_order_life.py TIMEOUT 400)
# host/common/nats_servers.c: --nats's URL list (one parser for every program).
add_snatch_unit_test(test_nats_servers ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_nats_servers.c LIBS snatch_common)
# {E}:orders compact records: every reader answers the JSON as before; JSON records of an
# earlier version are still read and republished.
add_snatch_py_test(test_compact_records integration/test_compact_records.py TIMEOUT 120)
