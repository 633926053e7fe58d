# Policy area: the LuaJIT embedding (host/script.c), the shared token buckets
# (host/ratelimit.c), lua/policy.lua and examples/*.lua.
#
# The unit tests link only the code under test (plus util.c) rather than snatch_core, so they do
# not depend on every other module of the host being complete; metrics_lua_counter is defined
# by test_script.c itself.
add_snatch_unit_test(test_script
  unit/test_script.c ${CMAKE_SOURCE_DIR}/host/script.c ${CMAKE_SOURCE_DIR}/host/ratelimit.c
  ${CMAKE_SOURCE_DIR}/host/util.c
  LIBS snatch_base PkgConfig::LUAJIT PkgConfig::JANSSON Threads::Threads m)
target_include_directories(test_script PRIVATE ${CMAKE_SOURCE_DIR}/host)
target_compile_definitions(test_script PRIVATE SNATCH_SOURCE_DIR="${CMAKE_SOURCE_DIR}")

add_snatch_unit_test(test_ratelimit
  unit/test_ratelimit.c ${CMAKE_SOURCE_DIR}/host/ratelimit.c
  LIBS Threads::Threads)
target_include_directories(test_ratelimit PRIVATE ${CMAKE_SOURCE_DIR}/host)

# Static checks of every Lua file we ship, when luacheck (Debian lua-check) is installed.
find_program(LUACHECK luacheck)
if(LUACHECK)
  add_test(NAME luacheck_redis
    COMMAND ${LUACHECK} --no-color --std lua51 --globals redis cjson KEYS ARGV --
      ${CMAKE_SOURCE_DIR}/lua/deduct.lua)
  add_test(NAME luacheck_policies
    COMMAND ${LUACHECK} --no-color --std luajit --read-globals host --
      ${CMAKE_SOURCE_DIR}/lua/policy.lua ${CMAKE_SOURCE_DIR}/examples)
  set_tests_properties(luacheck_redis luacheck_policies PROPERTIES TIMEOUT 60)
endif()
