# Use ccache when present. Precompiled headers need "sloppiness" so ccache can still hit, and GCC needs
# -fpch-preprocess so the preprocessed output names the PCH. BASEDIR/NOHASHDIR let a fresh clone in another
# folder reuse the cache.
find_program(STRIDE_CCACHE ccache)
if(STRIDE_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      CCACHE_BASEDIR=${PROJECT_SOURCE_DIR} CCACHE_NOHASHDIR=true
      ${STRIDE_CCACHE})
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fpch-preprocess>)
  message(STATUS "ccache: ${STRIDE_CCACHE}")
endif()
