# Redis repair after a master change (host/server/repair.h): lua/repair.lua and deduct.lua's
# owner gate against a real redis-server; the whole repair against real servers (a stale replica
# promoted by hand, and a Redis Cluster failover after lost writes), each with its control case
# showing that the checks catch the oversell when the repair or the gate is missing.
add_snatch_unit_test(test_repair_lua ${CMAKE_SOURCE_DIR}/tests/unit/test_repair_lua.c
  LIBS snatch_common)
target_compile_definitions(test_repair_lua PRIVATE SNATCH_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
add_snatch_py_test(repair integration/test_repair.py TIMEOUT 300)
