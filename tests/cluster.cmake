# Issue 11, operations: examples/nginx/snatch.conf run as shipped in front of real hosts (values
# against the host's deadlines, a verified sale, a sent POST never retried, X-Forwarded-For and
# X-User-Id behind it).
add_snatch_py_test(nginx integration/test_nginx.py TIMEOUT 120)
