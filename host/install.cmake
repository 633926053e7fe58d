# cmake --install and cpack -G DEB. Paths follow GNUInstallDirs, so the units and default files
# name the directories of this prefix (for the package: configure with
# -DCMAKE_INSTALL_PREFIX=/usr, which puts the configuration under /etc; tests/package.cmake).
set(SNATCH_BINDIR ${CMAKE_INSTALL_FULL_BINDIR})
set(SNATCH_DATADIR ${CMAKE_INSTALL_FULL_DATADIR}/snatch)
set(SNATCH_DOCDIR ${CMAKE_INSTALL_FULL_DATADIR}/doc/snatch)
set(SNATCH_SYSCONFDIR ${CMAKE_INSTALL_FULL_SYSCONFDIR})
# Install destinations stay relative to the prefix (so --prefix and DESTDIR are honoured),
# except the configuration of a /usr install, which belongs in the system's /etc (GNUInstallDirs
# says so for that prefix, and Debian packages do it).
set(SNATCH_UNIT_DEST lib/systemd/system) # systemd reads <prefix>/lib/systemd/system for both
if(CMAKE_INSTALL_FULL_SYSCONFDIR STREQUAL "/etc")
  set(SNATCH_DEFAULT_DEST /etc/default)
else()
  set(SNATCH_DEFAULT_DEST ${CMAKE_INSTALL_SYSCONFDIR}/default)
endif()

install(TARGETS snatch-host snatch-subscriber snatch-reconcile snatch-bench
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES lua/deduct.lua lua/repair.lua lua/policy.lua DESTINATION ${CMAKE_INSTALL_DATADIR}/snatch)
install(FILES README.md LICENSE CHANGELOG.md DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/snatch)
install(DIRECTORY examples/ DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/snatch/examples
  PATTERN systemd EXCLUDE)

set(SNATCH_PKG_DIR ${CMAKE_CURRENT_BINARY_DIR}/packaging)
foreach(f snatch-host@.service snatch-subscriber.service snatch-host-main.default
    snatch-subscriber.default postinst postrm)
  configure_file(examples/systemd/${f}.in ${SNATCH_PKG_DIR}/${f} @ONLY)
endforeach()
install(FILES ${SNATCH_PKG_DIR}/snatch-host@.service ${SNATCH_PKG_DIR}/snatch-subscriber.service
  DESTINATION ${SNATCH_UNIT_DEST})
install(FILES ${SNATCH_PKG_DIR}/snatch-host-main.default DESTINATION ${SNATCH_DEFAULT_DEST}
  RENAME snatch-host-main)
install(FILES ${SNATCH_PKG_DIR}/snatch-subscriber.default DESTINATION ${SNATCH_DEFAULT_DEST}
  RENAME snatch-subscriber)
# dpkg keeps an administrator's edits of these across upgrades.
file(WRITE ${SNATCH_PKG_DIR}/conffiles
  "${SNATCH_SYSCONFDIR}/default/snatch-host-main\n${SNATCH_SYSCONFDIR}/default/snatch-subscriber\n")
file(CHMOD ${SNATCH_PKG_DIR}/postinst ${SNATCH_PKG_DIR}/postrm
  PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ
  WORLD_EXECUTE)

set(CPACK_PACKAGE_NAME snatch)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "the snatch authors <snatch@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "flash-sale server: sells every ticket once, loses no order")
set(CPACK_RESOURCE_FILE_LICENSE ${CMAKE_SOURCE_DIR}/LICENSE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
# Depends: computed by dpkg-shlibdeps from the binaries, so it names exactly the Debian runtime
# libraries they link (libuv1, libluajit2, libhiredis, libnats, libsqlite3, libjansson, ...).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "redis-server, nats-server")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${SNATCH_PKG_DIR}/conffiles ${SNATCH_PKG_DIR}/postinst ${SNATCH_PKG_DIR}/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
