// Built when STRIDE_WITH_NCCL=OFF.
#include "comm/build_info.h"

namespace stride::comm {

std::string nccl_version() { return "not built"; }
bool nccl_built() { return false; }

}  // namespace stride::comm
