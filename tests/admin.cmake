# Live event administration (PUT/PATCH/pause/resume/list) against real redis-server and
# nats-server: create vs reset, stock changes under load, pause under load, bad input.
add_snatch_py_test(admin_events integration/test_admin_events.py TIMEOUT 300)
