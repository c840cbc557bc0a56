# Install rules beyond the programs (man pages, bash completion, Debian docs) and the Debian package.
#
#   cmake --build build && (cd build && cpack -G DEB)   ->  build/nemofs_<version>-1_<arch>.deb
#
# The package installs under /usr (CPack's default for DEB) and the mount helper in /sbin, where
# mount(8) looks. Its Depends are computed by dpkg-shlibdeps (packages dpkg-dev and file) plus fuse3,
# for fusermount3. Building the man pages needs go-md2man.
include(GNUInstallDirs)

set(NEMOFS_PACKAGE_MAINTAINER "nemofs maintainers <maintainers@users.noreply.r-seed-a4eba69c.example>"
    CACHE STRING "Maintainer field of the Debian package and its changelog")
set(NEMOFS_DEB_RELEASE 1 CACHE STRING "Debian revision of the package")
set(NEMOFS_DEB_VERSION "${PROJECT_VERSION}-${NEMOFS_DEB_RELEASE}")
set(NEMOFS_PKG_BUILD_DIR ${PROJECT_BINARY_DIR}/packaging)
file(MAKE_DIRECTORY ${NEMOFS_PKG_BUILD_DIR}/man)

# --- man pages: one Markdown source each, converted by go-md2man, installed gzipped ----------------
# SOURCE_DATE_EPOCH, when set, makes the dates (and so the package) reproducible.
string(TIMESTAMP NEMOFS_MAN_DATE "%Y-%m-%d" UTC)
string(TIMESTAMP NEMOFS_CHANGELOG_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)
find_program(NEMOFS_GO_MD2MAN go-md2man)
find_program(NEMOFS_GZIP gzip)
set(NEMOFS_MAN_PAGES nemofs.1 mount.nemofs.8)
set(NEMOFS_MAN_OUTPUTS)
if(NEMOFS_GO_MD2MAN AND NEMOFS_GZIP)
  foreach(page IN LISTS NEMOFS_MAN_PAGES)
    string(REGEX REPLACE "^.*\\.([0-9])$" "\\1" section ${page})
    set(md_in ${PROJECT_SOURCE_DIR}/docs/man/${page}.md)
    set(md ${NEMOFS_PKG_BUILD_DIR}/man/${page}.md)
    set(gz ${NEMOFS_PKG_BUILD_DIR}/man/${page}.gz)
    configure_file(${md_in} ${md} @ONLY)
    add_custom_command(OUTPUT ${gz}
      COMMAND ${NEMOFS_GO_MD2MAN} -in ${md} -out ${NEMOFS_PKG_BUILD_DIR}/man/${page}
      COMMAND sh -c "${NEMOFS_GZIP} -9 -n -c '${NEMOFS_PKG_BUILD_DIR}/man/${page}' > '${gz}'"
      DEPENDS ${md} ${md_in}
      COMMENT "Man page ${page}" VERBATIM)
    list(APPEND NEMOFS_MAN_OUTPUTS ${gz})
    install(FILES ${gz} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
  endforeach()
  # mount.fuse.nemofs is the same program as mount.nemofs: the same page.
  file(CREATE_LINK mount.nemofs.8.gz ${NEMOFS_PKG_BUILD_DIR}/man/mount.fuse.nemofs.8.gz SYMBOLIC)
  install(FILES ${NEMOFS_PKG_BUILD_DIR}/man/mount.fuse.nemofs.8.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
  add_custom_target(nemofs_man ALL DEPENDS ${NEMOFS_MAN_OUTPUTS})
else()
  message(WARNING "go-md2man or gzip not found: man pages will not be built or installed "
                  "(apt-get install go-md2man)")
endif()

# --- bash completion ---------------------------------------------------------------------------------
install(FILES ${PROJECT_SOURCE_DIR}/completion/nemofs.bash
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME nemofs)

# --- Debian documentation: copyright and changelog.Debian.gz ------------------------------------------
configure_file(${CMAKE_CURRENT_LIST_DIR}/changelog.Debian.in ${NEMOFS_PKG_BUILD_DIR}/changelog.Debian @ONLY)
if(NEMOFS_GZIP)
  add_custom_command(OUTPUT ${NEMOFS_PKG_BUILD_DIR}/changelog.Debian.gz
    COMMAND sh -c "${NEMOFS_GZIP} -9 -n -c '${NEMOFS_PKG_BUILD_DIR}/changelog.Debian' > '${NEMOFS_PKG_BUILD_DIR}/changelog.Debian.gz'"
    DEPENDS ${NEMOFS_PKG_BUILD_DIR}/changelog.Debian VERBATIM)
  add_custom_target(nemofs_debian_changelog ALL DEPENDS ${NEMOFS_PKG_BUILD_DIR}/changelog.Debian.gz)
  install(FILES ${NEMOFS_PKG_BUILD_DIR}/changelog.Debian.gz DESTINATION ${CMAKE_INSTALL_DOCDIR})
endif()
install(FILES ${CMAKE_CURRENT_LIST_DIR}/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})

# --- CPack: the Debian package --------------------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME nemofs)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${NEMOFS_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "FUSE filesystem showing ML checkpoints as folders")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "nemofs mounts a machine-learning checkpoint as an ordinary folder: NeMo .nemo
archives, .safetensors files, PyTorch torch.save files and Lightning .ckpt,
PyTorch Distributed Checkpoint folders and Hugging Face sharded folders. Each
tensor is a raw file with a JSON sidecar giving its dtype and shape, readable
with cat, grep, jq or numpy.memmap; nothing is extracted or copied, and nothing
hidden in a pickle is run. The members of a .nemo archive can be edited in
place and are committed back on unmount.
.
The package includes mount.nemofs, so checkpoints can be mounted with
mount -t nemofs and from /etc/fstab.")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${NEMOFS_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_RELEASE ${NEMOFS_DEB_RELEASE})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "fuse3")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "bash-completion")
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS OFF)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR})
include(CPack)
