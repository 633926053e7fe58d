# The loop-stall watchdog (host/server/stallwatch.c): its verdicts, and the watchdog thread on a
# real loop whose turn blocks.
add_snatch_unit_test(test_stallwatch ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_stallwatch.c
  LIBS snatch_server)
# A policy whose admit() never returns for one buyer: the other thread keeps selling, /healthz
# says 503 stalled, /metrics counts it, --stall-exit-ms ends the process with status 70, and the
# invariants hold after (reconciliation).
add_snatch_py_test(loop_stall integration/test_stall.py TIMEOUT 300)
