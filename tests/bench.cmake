# snatch-bench: histogram and oracle unit tests; the load generator against an in-test server.
add_snatch_unit_test(test_bench_hist unit/test_bench_hist.c LIBS snatch_bench_core)
add_snatch_unit_test(test_bench_oracle unit/test_bench_oracle.c LIBS snatch_bench_core)
add_snatch_py_test(test_bench integration/test_bench.py TIMEOUT 240)
