# Policy area: the LuaJIT embedding (host/policy/script.c), the shared token buckets
# (host/policy/ratelimit.c), lua/policy.lua and examples/*.lua. The tests link snatch_policy as
# the programs do; test_script counts host.counter() through script_set_counter().
add_snatch_unit_test(test_script unit/test_script.c LIBS snatch_policy)
add_snatch_unit_test(test_ratelimit unit/test_ratelimit.c LIBS snatch_policy)
# Static checks of every Lua file we ship, when luacheck (Debian lua-check) is installed.
find_program(LUACHECK luacheck)
if(LUACHECK)
  add_test(NAME luacheck_redis
    COMMAND ${LUACHECK} --no-color --std lua51 --globals redis cjson KEYS ARGV --
      ${CMAKE_SOURCE_DIR}/lua/deduct.lua ${CMAKE_SOURCE_DIR}/lua/repair.lua)
  add_test(NAME luacheck_policies
    COMMAND ${LUACHECK} --no-color --std luajit --read-globals host --
      ${CMAKE_SOURCE_DIR}/lua/policy.lua ${CMAKE_SOURCE_DIR}/examples)
  set_tests_properties(luacheck_redis luacheck_policies PROPERTIES TIMEOUT 60)
endif()
