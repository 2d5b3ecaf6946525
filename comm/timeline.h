// The per-bucket overlap timeline of one reducing step: what the gradient reducer (comm/reducer.h) measures, the
// heartbeats carry (fields 37-39) and the coordinator shows. No LibTorch here: cluster/ reads it too.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace stride::comm {

// Note [Overlap timeline]: where each bucket's communication fell relative to backward in the last step that
// reduced. Times are seconds after backward of the reducing micro-batch began (prepare(true)); backward ends when
// finish() is called. A bucket's communication is hidden for the part of [started_s, done_s] before backward
// ended. Back-ends that cannot time the collective on the host (NCCL) report started_s = launched_s and done_s = when
// finish()'s wait returned, so hidden time is then an estimate and exposed time an upper bound.
struct BucketTiming {
  int64_t bytes = 0;          // communicated this step (after compression)
  int64_t parameters = 0;     // parameters in the bucket
  double ready_s = 0;         // its last gradient was accumulated (backward end for buckets with unused parameters)
  double launched_s = 0;      // handed to the communicator (buckets launch in index order)
  double started_s = 0;       // the collective began running
  double done_s = 0;          // it completed
  bool communicated = false;  // false with one rank or skip_communication: only ready/launched are meaningful
  double comm_s() const { return communicated ? std::max(0.0, done_s - started_s) : 0.0; }
  double hidden_s(double backward_s) const {
    return communicated ? std::max(0.0, std::min(done_s, backward_s) - started_s) : 0.0;
  }
};

struct StepTimeline {
  int64_t step = 0;                   // reducing steps so far, counting this one (1 for the first); 0: none yet
  double backward_s = 0;              // backward of the reducing micro-batch
  double finished_s = 0;              // finish() returned: gradients averaged
  std::vector<BucketTiming> buckets;  // in launch order
  // Share of this step's communication time that ran during backward (0 when nothing was communicated).
  double hidden_fraction() const {
    double comm = 0, hidden = 0;
    for (const auto& b : buckets) comm += b.comm_s(), hidden += b.hidden_s(backward_s);
    return comm > 0 ? hidden / comm : 0.0;
  }
};

}  // namespace stride::comm
