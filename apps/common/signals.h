// signals.h - How a long-running app is stopped and what it ignores.
//
// SIGINT (Ctrl-C), SIGTERM, SIGHUP (a closed terminal or ssh session) and SIGUSR1
// (a batch scheduler's warning) only set a flag: the app finishes its step,
// checkpoints and exits. SIGPIPE is ignored for every app (run_app does it, and
// SIGXFSZ: a file past `ulimit -f` fails its write with an error instead): a
// reader that goes away (`train ... | head`) makes writes to stdout fail instead
// of killing the process.
#pragma once

namespace sessa::apps {

void install_stop_signals();
bool stop_requested();
// The signal that asked for the stop (0: none yet), e.g. for "stopped by SIGTERM".
int stop_signal();
const char* signal_name(int signal);

}  // namespace sessa::apps
