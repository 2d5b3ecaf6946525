// "Did you mean ...?" for names people type: subcommands, flags, model names, enumerated values.
#pragma once

#include <string>
#include <vector>

namespace stride {

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of neighbours cost 1 each
// ("trian" is one edit from "train").
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate a person most likely meant by `typed`, or "" when none is close. Case, '-' and '_' are ignored
// first ("ResNet18", "resnet-18" and "resnet_18" all mean "resnet18"); then the nearest by edit distance wins if
// it is within a third of the name's length (at least 1, at most 3 edits). Ties go to the earlier candidate.
std::string closest_name(const std::string& typed, const std::vector<std::string>& candidates);

// Every candidate as close as the closest (ties), in the candidates' order; empty when none is close.
std::vector<std::string> closest_names(const std::string& typed, const std::vector<std::string>& candidates);

// " (did you mean 'x'?)", " (did you mean 'x' or 'y'?)" (at most three), or "".
std::string did_you_mean(const std::string& typed, const std::vector<std::string>& candidates);

}  // namespace stride
