// Compiled only with STRIDE_WITH_NCCL=ON. Asks the NCCL library that the dynamic linker actually loaded, which
// can differ from the headers we compiled against.
#include <nccl.h>

#include "comm/build_info.h"
#include "common/error.h"

namespace stride::comm {

std::string nccl_version() {
  int code = 0;
  const ncclResult_t rc = ncclGetVersion(&code);
  if (rc != ncclSuccess) throw Error(concat("ncclGetVersion failed: ", ncclGetErrorString(rc)));
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return concat(code / 10000, ".", (code / 100) % 100, ".", code % 100);
}

bool nccl_built() { return true; }

}  // namespace stride::comm
