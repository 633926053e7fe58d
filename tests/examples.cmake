# examples/access_code.lua and examples/vip_early_access.lua end to end (codes signed by the
# test, sent in headers, refusals checked to reach nothing in Redis).
add_snatch_py_test(policy_examples integration/test_policy_examples.py TIMEOUT 180)
