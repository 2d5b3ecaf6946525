#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // One intra-op thread: results are reproducible and tests do not fight over the 2 cores.
  torch::set_num_threads(1);
  return RUN_ALL_TESTS();
}
