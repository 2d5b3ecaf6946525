// --bucket-cap-mb auto in the training loop (Note [Bucket cap tuning] in comm/bucket_tuner.h): which cap the
// reducer starts with, the rebuilds between candidates, and the decision's record (log line, metrics.jsonl, every
// later MANIFEST, reused by a resume on as many ranks).
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "trainer/run_state.h"

namespace stride::trainer {
namespace {

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

std::string list_mib(const std::vector<int64_t>& caps) {
  std::string out;
  for (size_t i = 0; i < caps.size(); ++i) {
    out += concat(i == 0 ? "" : (i + 1 == caps.size() ? " and " : ", "), mib(caps[i]));
  }
  return out + " MiB";
}

}  // namespace

int64_t Trainer::State::initial_bucket_cap() {
  if (!bucket_cap_auto(c)) {
    bucket_choice.reset();  // a fixed cap: a checkpoint's earlier choice no longer describes the run
    return bucket_cap_bytes(c);
  }
  if (bucket_choice && bucket_choice->world_size() == world) {
    out->print(concat("bucket cap auto: ", comm::format_mib(static_cast<int64_t>(bucket_choice->cap_mb() * (1 << 20))),
                      " as decided at step ", bucket_choice->decided_step(),
                      " (from the checkpoint; not tuned again)"));
    out->record("bucket_cap", step, {{"cap_mb", bucket_choice->cap_mb()}, {"source", "checkpoint"}});
    return static_cast<int64_t>(bucket_choice->cap_mb() * (1 << 20));
  }
  if (bucket_choice) {
    out->print(concat("bucket cap auto: the checkpoint's choice (", bucket_choice->cap_mb(), " MiB) was measured on ",
                      bucket_choice->world_size(), " ranks, this run has ", world, ": tuning again"));
    bucket_choice.reset();
  }
  const auto params = model->named_parameters().pairs();
  const auto all = comm::default_bucket_cap_candidates();
  const auto caps = comm::distinct_bucket_caps(params, all);
  if (caps.size() == 1) {
    // Nothing to measure: every candidate cuts the gradients the same way.
    const auto buckets = comm::plan_buckets(params, caps.front()).size();
    proto::BucketCapChoice choice;
    choice.set_cap_mb(mib(caps.front()));
    choice.set_decided_step(static_cast<uint64_t>(step));
    choice.set_world_size(static_cast<uint32_t>(world));
    choice.add_candidates_mb(mib(caps.front()));
    bucket_choice = choice;
    out->print(concat("bucket cap auto: ", list_mib(all), " all cut ", c.model, "'s gradients into the same ", buckets,
                      " bucket", buckets == 1 ? "" : "s", " -> ", comm::format_mib(caps.front())));
    out->record("bucket_cap", step, {{"cap_mb", choice.cap_mb()}, {"source", "single layout"}, {"buckets", buckets}});
    return caps.front();
  }
  comm::BucketTunerOptions o;
  o.candidates = caps;
  o.steps_per_candidate = c.bucket_tune_steps;
  bucket_tuner = std::make_unique<comm::BucketCapTuner>(o);
  bucket_tuning_start = step;
  const size_t same = all.size() - caps.size();
  out->print(concat("bucket cap auto: timing ", list_mib(caps),
                    same ? concat(" (", same, " other candidate", same == 1 ? "" : "s", " give the same buckets)") : "",
                    " over steps ", step + 1, "-", step + bucket_tuner->total_steps(), ": ", o.warmup_steps,
                    " warm-up, then ", o.settle_steps, " settling + ", o.steps_per_candidate, " timed per cap"));
  return bucket_tuner->initial_cap();
}

void Trainer::State::tune_bucket_cap() {
  // The reducing step's backward start to its averaged gradients: the part of the step the cap changes.
  const double seconds = reducer->timeline().finished_s;
  const int64_t before = reducer->bucket_cap_bytes();
  const int64_t next = bucket_tuner->after_step(seconds, *comm);  // the decision step broadcasts rank 0's choice
  if (next != before) reducer->rebuild(next);
  if (!bucket_tuner->done()) return;
  proto::BucketCapChoice choice;
  choice.set_cap_mb(mib(bucket_tuner->chosen_cap()));
  choice.set_decided_step(static_cast<uint64_t>(step));
  choice.set_world_size(static_cast<uint32_t>(world));
  nlohmann::json candidates = nlohmann::json::array(), medians = nlohmann::json::array();
  for (const auto& r : bucket_tuner->results()) {
    choice.add_candidates_mb(mib(r.cap_bytes));
    choice.add_median_ms(r.median_s * 1e3);
    candidates.push_back(mib(r.cap_bytes));
    medians.push_back(r.median_s * 1e3);
  }
  out->print(concat("bucket cap auto: ", bucket_tuner->describe()));
  out->record("bucket_cap", step,
              {{"cap_mb", choice.cap_mb()},
               {"source", "tuned"},
               {"candidates_mb", candidates},
               {"median_ms", medians},
               {"buckets", reducer->bucket_names().size()}});
  bucket_choice = choice;
  bucket_tuner.reset();
}

void Trainer::State::end_bucket_tuning() {
  if (!bucket_tuner) return;
  out->print(concat("bucket cap auto: the run ended during tuning (steps ", bucket_tuning_start + 1, "-",
                    bucket_tuning_start + bucket_tuner->total_steps(),
                    "): nothing decided; a resumed run tunes again"));
}

}  // namespace stride::trainer
