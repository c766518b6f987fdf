// svg_plot.h - Line plots (e.g. loss curves) rendered by hand as standalone SVG.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sessa::apps {

struct Series {
  std::string name;
  std::string color;                              // any SVG color; empty picks one from a built-in palette
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in the given order
};

// Returns an 800x500 SVG document with axes, "nice" ticks, grid, one polyline
// per series (a marker for single-point series), legend, title and axis labels.
// Points with NaN/inf (or |value| > 1e300) coordinates, with log_y those with
// y <= 0 and with log_x those with x <= 0, are skipped. Log axes have ticks at
// powers of 10 (with 2 and 5 multiples when the range spans at most two decades).
std::string svg_line_plot(const std::vector<Series>& series, const std::string& title, const std::string& x_label,
                          const std::string& y_label, bool log_y, bool log_x = false);

}  // namespace sessa::apps
