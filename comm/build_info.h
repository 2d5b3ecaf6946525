// What communication back-ends this binary was built with. Thread-safe.
#pragma once

#include <string>

namespace stride::comm {

// "2.28.9" for the NCCL library loaded at run time, or "not built" when STRIDE_WITH_NCCL was off.
std::string nccl_version();
bool nccl_built();

}  // namespace stride::comm
