// Stop requests by signal. SIGTERM, SIGINT and SIGUSR2 (Slurm's warning before the time limit) ask the run to
// checkpoint at the next control point and stop cleanly; a second SIGINT exits at once (exit code 130).
// install_stop_signals() is called once from main (the `stride train` command), before training starts; the
// training thread polls stop_signal() at its control points. Async-signal-safe: the handler only stores the
// signal number.
#pragma once

namespace stride::trainer {

void install_stop_signals();
// The signal that asked for a stop, or 0.
int stop_signal();

}  // namespace stride::trainer
