# Operators' side: --version/--help/usage errors of every program, snatch-reconcile's --db
# check and the ORDERS retention flags (test_ops); the Debian package and its systemd units
# (test_package: its own Release build for /usr in a temp dir, ~10-30 s).
add_snatch_py_test(ops integration/test_ops.py TIMEOUT 120)
find_program(CPACK_BIN cpack)
find_program(DPKG_DEB dpkg-deb)
find_program(SYSTEMD_ANALYZE systemd-analyze)
if(DPKG_DEB AND SYSTEMD_ANALYZE)
  add_snatch_py_test(package integration/test_package.py TIMEOUT 300)
else()
  message(STATUS "package test skipped: dpkg-deb or systemd-analyze missing (scripts/setup.sh)")
endif()
# docs/openapi.yaml against a running host (python3-jsonschema, python3-yaml).
add_snatch_py_test(openapi integration/test_openapi.py TIMEOUT 180)
# scripts/quickstart.sh, the README recipe, end to end on free ports.
add_snatch_py_test(quickstart integration/test_quickstart.py TIMEOUT 180)
