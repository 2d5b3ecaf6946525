// One-line usage errors for CLI11 parse failures, with the closest flag or subcommand suggested: `stride trian`
// -> "did you mean 'train'?", `--bach-size` -> "did you mean '--batch-size'?". Flags other launchers use
// (torchrun's --nproc-per-node, ...) get a pointer to Stride's equivalent.
#pragma once

#include <CLI/CLI.hpp>
#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "common/suggest.h"

namespace stride {

// Other tools' flags that people type at Stride, and what to use instead.
inline const char* foreign_flag_hint(const std::string& flag) {
  static const std::vector<std::pair<std::string, const char*>> hints = {
      {"nproc-per-node", "torchrun's --nproc-per-node is `stride launch -n N` (ranks on this host)"},
      {"nnodes", "torchrun's --nnodes is `stride launch --hostfile FILE` or `stride submit --nodes N`"},
      {"node-rank", "ranks are numbered by mpirun/srun; `stride launch` needs no --node-rank"},
      {"master-addr", "torchrun's --master-addr is `stride launch --coordinator-host ADDR`"},
      {"master-port", "torchrun's --master-port is `stride launch --coordinator-port PORT`"},
      {"rdzv-endpoint", "torchrun's --rdzv-endpoint is `stride launch --coordinator-host ADDR`"},
  };
  std::string key = flag;
  while (!key.empty() && key[0] == '-') key.erase(0, 1);
  for (auto& c : key) c = c == '_' ? '-' : c;
  for (const auto& [name, hint] : hints) {
    if (key == name) return hint;
  }
  return nullptr;
}

// The names `app` accepts: its flags as typed ("--batch-size", "-b") and its subcommands.
inline std::vector<std::string> cli_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::Option* o : app.get_options()) {
    for (const auto& l : o->get_lnames()) names.push_back("--" + l);
    for (const auto& s : o->get_snames()) names.push_back("-" + s);
  }
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  return names;
}

// Another subcommand of `root` that takes `flag` exactly (`stride launch --epochs 3`: a flag of `stride train`).
inline const CLI::App* sibling_with_flag(const CLI::App& root, const CLI::App& app, const std::string& flag) {
  for (const CLI::App* sub : root.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub == &app) continue;
    for (const CLI::Option* o : sub->get_options()) {
      if (o->check_name(flag)) return sub;
    }
  }
  return nullptr;
}

// What to print after "stride: error: " for a parse failure of `root` on `args` (the command line without the
// program name; not for --help, which is not an error). The arguments are walked as CLI11 would: subcommand
// names descend, and everything after `--` belongs to the command. The first flag the current command does not
// know, or the first word that is not one of the root's subcommands, is named with the closest real name.
inline std::string describe_parse_error(const CLI::App& root, const CLI::ParseError& e,
                                        const std::vector<std::string>& args) {
  const std::string message = e.what();
  // (get_name() is not the error's kind here: CLI11 names a subcommand's ExtrasError after the subcommand.)
  if (dynamic_cast<const CLI::ExtrasError*>(&e) == nullptr && dynamic_cast<const CLI::RequiredError*>(&e) == nullptr) {
    return message;
  }
  const CLI::App* app = &root;
  std::string path = root.get_name();
  for (const auto& word : args) {
    if (word == "--") break;
    const bool is_flag = word.size() > 1 && word[0] == '-' && !std::isdigit(static_cast<unsigned char>(word[1]));
    if (!is_flag) {
      const CLI::App* sub = nullptr;
      for (const CLI::App* s : app->get_subcommands([](const CLI::App*) { return true; })) {
        if (s->check_name(word)) sub = s;
      }
      if (sub != nullptr) {
        app = sub;
        path += " " + sub->get_name();
        continue;
      }
      if (app->get_subcommands([](const CLI::App*) { return true; }).empty() || app != &root) continue;
      std::vector<std::string> commands;
      for (const CLI::App* s : app->get_subcommands([](const CLI::App*) { return true; })) {
        commands.push_back(s->get_name());
      }
      const std::string best = closest_name(word, commands);
      return "unknown command '" + word + "' for `" + path + "`" +
             (best.empty() ? "" : "; did you mean '" + best + "'?") + " (see `" + path + " --help`)";
    }
    const std::string name = word.substr(0, word.find('='));
    if (app->get_option_no_throw(name) != nullptr || name == "--help" || name == "-h") continue;
    std::string advice;
    if (const char* hint = foreign_flag_hint(name)) {
      advice = hint;
    } else if (const CLI::App* owner = app != &root ? sibling_with_flag(root, *app, name) : nullptr) {
      advice = "it is a flag of `" + root.get_name() + " " + owner->get_name() + "`";
      if (owner->get_name() == "train") advice += "; training flags go after `--`";
    } else {
      std::vector<std::string> flags;
      for (const auto& n : cli_names(*app)) {
        if (n[0] == '-') flags.push_back(n);
      }
      const std::string best = closest_name(name, flags);
      if (!best.empty()) advice = "did you mean '" + best + "'?";
    }
    return "unknown flag '" + name + "' for `" + path + "`" + (advice.empty() ? "" : "; " + advice) + " (see `" + path +
           " --help`)";
  }
  return message;
}

}  // namespace stride
