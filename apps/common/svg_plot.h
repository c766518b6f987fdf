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
// Points with NaN/inf (or |value| > 1e300) coordinates, and with log_y those
// with y <= 0, are skipped.
std::string svg_line_plot(const std::vector<Series>& series, const std::string& title, const std::string& x_label,
                          const std::string& y_label, bool log_y);

}  // namespace sessa::apps
