# Fault suite: three hosts on one Redis / NATS / subscriber, one fault per case (kill -9 of hosts,
# SIGTERM, SIGHUP storms; subscriber, NATS and Redis crashes, restarts and stalls), each ending
# with the no-oversell / no-undersell / no-duplicate / no-lost-order check. docs/RELIABILITY.md
# has the last table; scripts/faults.sh rewrites it.
add_snatch_py_test(faults integration/test_faults.py TIMEOUT 600)
add_snatch_py_test(faults_infra integration/test_faults_infra.py TIMEOUT 600)
# Regression tests of two bugs this suite found (a Redis timeout answered 503 while the script
# still sold later; SIGTERM dropped the answers of the last sales), both fixed.
add_snatch_py_test(faults_regressions integration/test_faults_regressions.py TIMEOUT 120)
# Issue 8: a Redis that is up but refuses the host's setup commands (LOADING after kill -9 with a
# slow AOF reload, BUSY in a long script while a host connects): the hosts must recover alone.
add_snatch_py_test(faults_redis_setup integration/test_faults_redis_setup.py TIMEOUT 300)
# Issue 11, JetStream cluster: three nats-servers, stream ORDERS R3, two hosts and the subscriber
# on the three URLs; kill -9 of the stream leader, of a non-leader node with clients on it,
# SIGTERM (lame duck) of the leader, each mid-sale, each ending with the invariant check.
add_snatch_py_test(faults_jetstream integration/test_faults_jetstream.py TIMEOUT 300)
