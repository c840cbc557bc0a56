// gzip random access: a gzip-compressed .nemo (NeMo < 1.7) served without decompressing it.
//
// The public header of formats/gzip: code outside it includes this one.
//   formats/gzip/index.h        gzip member layout, access points and blocks (GzipIndex), the first
//                               pass that builds an index (first_pass.cpp)
//   formats/gzip/index_file.h   the on-disk index file, its cache folder (index_file.cpp)
//   formats/gzip/gzip_source.h  GzipSource: reads through an index and a bounded block cache
//                               (gzip_source.cpp), and open_gzip (index_file.cpp: load or build, store)
#pragma once

#include "formats/gzip/gzip_source.h"  // IWYU pragma: export
#include "formats/gzip/index.h"        // IWYU pragma: export
#include "formats/gzip/index_file.h"   // IWYU pragma: export
