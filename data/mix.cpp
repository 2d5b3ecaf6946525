#include "data/mix.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "data/rng.h"

namespace stride::data {

MixResult mix_batch(const torch::Tensor& images, const torch::Tensor& labels, int64_t num_classes,
                    const MixOptions& options, uint64_t seed) {
  STRIDE_CHECK(images.dim() == 4 && images.is_floating_point(), "mix_batch needs a float [N, C, H, W] batch, got ",
               images.sizes());
  STRIDE_CHECK_EQ(labels.size(0), images.size(0), "labels vs images");
  auto onehot = torch::one_hot(labels.to(torch::kLong), num_classes).to(images.scalar_type());
  MixResult r;
  if (!options.enabled() || images.size(0) < 2) {
    r.images = images;
    r.targets = onehot;
    return r;
  }
  Rng rng(seed);
  const bool use_cutmix = options.cutmix_alpha > 0.0 && (options.mixup_alpha <= 0.0 || rng.bernoulli(0.5));
  const double alpha = use_cutmix ? options.cutmix_alpha : options.mixup_alpha;
  double lambda = rng.beta(alpha, alpha);
  auto rolled = images.roll(1, 0);
  if (use_cutmix) {
    const int64_t h = images.size(2), w = images.size(3);
    const double r_cut = std::sqrt(1.0 - lambda);
    const int64_t cw = static_cast<int64_t>(w * r_cut), ch = static_cast<int64_t>(h * r_cut);
    const int64_t cx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(w)));
    const int64_t cy = static_cast<int64_t>(rng.below(static_cast<uint64_t>(h)));
    const int64_t x1 = std::clamp<int64_t>(cx - cw / 2, 0, w), x2 = std::clamp<int64_t>(cx + cw / 2, 0, w);
    const int64_t y1 = std::clamp<int64_t>(cy - ch / 2, 0, h), y2 = std::clamp<int64_t>(cy + ch / 2, 0, h);
    r.images = images.clone();
    using torch::indexing::Slice;
    r.images.index_put_({Slice(), Slice(), Slice(y1, y2), Slice(x1, x2)},
                        rolled.index({Slice(), Slice(), Slice(y1, y2), Slice(x1, x2)}));
    lambda = 1.0 - static_cast<double>((x2 - x1) * (y2 - y1)) / static_cast<double>(w * h);
    r.cutmix = true;
  } else {
    r.images = images * lambda + rolled * (1.0 - lambda);
  }
  r.targets = onehot * lambda + onehot.roll(1, 0) * (1.0 - lambda);
  r.lambda = lambda;
  return r;
}

}  // namespace stride::data
