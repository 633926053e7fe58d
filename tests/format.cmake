# House format (.clang-format at the top): the C sources must be as clang-format writes them.
find_program(CLANG_FORMAT clang-format)
if(CLANG_FORMAT)
  file(GLOB SNATCH_FORMATTED_SOURCES
    ${CMAKE_SOURCE_DIR}/host/*/*.[ch]
    ${CMAKE_SOURCE_DIR}/tests/unit/*.c)
  add_test(NAME clang_format
    COMMAND ${CLANG_FORMAT} --dry-run -Werror ${SNATCH_FORMATTED_SOURCES})
endif()
