# The sale path end to end: snatch-host against real redis-server and nats-server.
add_snatch_py_test(sale_path integration/test_sale.py TIMEOUT 300)
add_snatch_py_test(sale_reload integration/test_reload.py TIMEOUT 300)
add_snatch_py_test(sale_bad_input integration/test_bad_input.py TIMEOUT 300)
add_snatch_py_test(orders_e2e integration/test_orders_e2e.py TIMEOUT 300)
add_snatch_py_test(sale_hostile integration/test_hostile.py TIMEOUT 400)
# /metrics of host and subscriber under load (promtool), examples/prometheus checked against them.
add_snatch_py_test(metrics integration/test_metrics.py TIMEOUT 180)
# Log lines of every program: time, level, program; --log-format json.
add_snatch_py_test(logs integration/test_logs.py TIMEOUT 180)
# host/server/sale.c's state machine with fake Redis/JetStream backends (sale_set_backend),
# and host/server/api.c's routing table, answers captured through reply_set_sink.
add_snatch_unit_test(test_sale ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_sale.c LIBS snatch_server)
add_snatch_unit_test(test_api ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_api.c LIBS snatch_server)
# host/server/metrics.c: the Prometheus text of GET /metrics (families, values).
add_snatch_unit_test(test_metrics ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_metrics.c LIBS snatch_server)
# host/server/events.c: event discovery, refresh and quota refill through the worker's Redis
# client against a real redis-server, with lua/policy.lua's quota.
add_snatch_unit_test(test_events ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_events.c
  LIBS snatch_server snatch_test_loop)
# lua/deduct.lua's batch form against a real redis-server (mixed outcomes, limits, acks riding).
add_snatch_py_test(deduct_batch integration/test_deduct_batch.py TIMEOUT 120)
# Group commit end to end: a burst of tens of thousands sold in batches, kill -9 mid-batches.
add_snatch_py_test(group_commit integration/test_group_commit.py TIMEOUT 600)
# host/server/pending.c: acknowledged ids leaving {E}:pending (one HDEL per event per turn, taken
# by a deduction batch, held for a carrier, full queue, close, failed HDEL counted) against a real
# redis-server through the worker's Redis client.
add_snatch_unit_test(test_pending ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_pending.c
  LIBS snatch_server snatch_test_loop)
