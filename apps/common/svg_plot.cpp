// svg_plot.cpp - Axis scaling, tick selection and SVG emission for svg_line_plot.
#include "apps/common/svg_plot.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>

namespace sessa::apps {

namespace {

constexpr int kWidth = 800;
constexpr int kHeight = 500;
constexpr double kPlotLeft = 80;
constexpr double kPlotRight = 620;
constexpr double kPlotTop = 50;
constexpr double kPlotBottom = 430;
constexpr double kLegendX = 640;
constexpr int kTargetTickCount = 6;
constexpr int kMaxLogTickDecades = 7;
constexpr double kMaxPlottableMagnitude = 1e300;
constexpr std::array<const char*, 8> kPalette = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                 "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

struct Tick {
  double position;  // in axis units (log10 of the value on a log axis)
  std::string label;
};

// An axis spanning [lo, hi] in axis units.
struct Axis {
  double lo = 0;
  double hi = 1;
  bool log = false;
  std::vector<Tick> ticks;
};

struct Bounds {
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  bool empty() const { return min > max; }
  void include(double value) {
    min = std::min(min, value);
    max = std::max(max, value);
  }
};

std::string xml_escape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format(const char* pattern, double value, int precision = 0) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, precision, value);
  return buffer;
}

std::string coordinate(double value) { return format("%.*f", value, 1); }

// False for NaN, infinities and magnitudes so large that axis spans overflow.
bool is_plottable(double value) { return std::fabs(value) <= kMaxPlottableMagnitude; }

bool is_drawable(const std::pair<double, double>& point, bool log_x, bool log_y) {
  return is_plottable(point.first) && is_plottable(point.second) && (!log_x || point.first > 0) &&
         (!log_y || point.second > 0);
}

std::pair<Bounds, Bounds> data_bounds(const std::vector<Series>& series, bool log_x, bool log_y) {
  Bounds x, y;
  for (const Series& s : series) {
    for (const auto& point : s.points) {
      if (!is_drawable(point, log_x, log_y)) continue;
      x.include(point.first);
      y.include(point.second);
    }
  }
  return {x, y};
}

// Widens an empty or zero-width range so that it can be scaled.
Bounds padded(Bounds bounds, double empty_min, double empty_max) {
  if (bounds.empty()) return Bounds{empty_min, empty_max};
  if (bounds.min == bounds.max) {
    const double pad = bounds.min == 0 ? 1 : std::fabs(bounds.min) * 0.1;
    return Bounds{bounds.min - pad, bounds.max + pad};
  }
  return bounds;
}

int tick_count(double min, double max, double step) {
  return static_cast<int>(std::ceil(max / step - 1e-9) - std::floor(min / step + 1e-9)) + 1;
}

// Picks the step of the form {1,2,5} x 10^k whose tick count is nearest the target.
double nice_step(double min, double max) {
  const int base_exponent = static_cast<int>(std::floor(std::log10(max - min))) - 2;
  double best_step = max - min;
  int best_distance = std::numeric_limits<int>::max();
  for (int exponent = base_exponent; exponent <= base_exponent + 3; ++exponent) {
    for (const double mantissa : {1.0, 2.0, 5.0}) {
      const double step = mantissa * std::pow(10.0, exponent);
      const int distance = std::abs(tick_count(min, max, step) - kTargetTickCount);
      if (distance <= best_distance) {
        best_distance = distance;
        best_step = step;
      }
    }
  }
  return best_step;
}

// Labels share one style per axis: fixed-point with as many decimals as the
// step needs, or scientific when the axis magnitude is very large or small.
std::string linear_tick_label(double value, double step, double axis_magnitude) {
  const int step_exponent = static_cast<int>(std::floor(std::log10(step) + 1e-9));
  if (axis_magnitude >= 1e-4 && axis_magnitude < 1e6 && step_exponent >= -8) {
    return format("%.*f", value, std::max(0, -step_exponent));
  }
  const double magnitude = std::max(std::fabs(value), step);
  const int value_exponent = static_cast<int>(std::floor(std::log10(magnitude)));
  return format("%.*e", value, std::clamp(value_exponent - step_exponent, 0, 15));
}

Axis linear_axis(Bounds data) {
  const Bounds range = padded(data, 0, 1);
  const double step = nice_step(range.min, range.max);
  const double first = std::floor(range.min / step + 1e-9);
  const int count = tick_count(range.min, range.max, step);
  Axis axis{first * step, (first + count - 1) * step, false, {}};
  const double magnitude = std::max(std::fabs(axis.lo), std::fabs(axis.hi));
  for (int i = 0; i < count; ++i) {
    double value = (first + i) * step;
    if (std::fabs(value) < step * 1e-6) value = 0;
    axis.ticks.push_back({value, linear_tick_label(value, step, magnitude)});
  }
  return axis;
}

std::string power_tick_label(int mantissa, int exponent) {
  if (exponent >= -3 && exponent <= 4) {
    return format("%.*g", mantissa * std::pow(10.0, exponent), 6);
  }
  return std::to_string(mantissa) + "e" + std::to_string(exponent);
}

// Ticks at powers of 10 (every few decades when the range is wide), plus 2 and
// 5 multiples when it spans at most two decades.
Axis log_axis(Bounds data) {
  const Bounds range = data.empty() ? Bounds{1, 10} : data;
  int lo = static_cast<int>(std::floor(std::log10(range.min)));
  int hi = static_cast<int>(std::ceil(std::log10(range.max)));
  if (lo == hi) {
    --lo;
    ++hi;
  }
  const int stride = (hi - lo + kMaxLogTickDecades - 1) / kMaxLogTickDecades;
  hi = lo + stride * ((hi - lo + stride - 1) / stride);
  Axis axis{static_cast<double>(lo), static_cast<double>(hi), true, {}};
  for (int exponent = lo; exponent <= hi; exponent += stride) {
    axis.ticks.push_back({static_cast<double>(exponent), power_tick_label(1, exponent)});
    if (hi - lo > 2 || exponent == hi) continue;
    for (const int mantissa : {2, 5}) {
      axis.ticks.push_back({exponent + std::log10(mantissa), power_tick_label(mantissa, exponent)});
    }
  }
  return axis;
}

double pixel_x(const Axis& axis, double position) {
  return kPlotLeft + (position - axis.lo) / (axis.hi - axis.lo) * (kPlotRight - kPlotLeft);
}

double pixel_y(const Axis& axis, double position) {
  return kPlotBottom - (position - axis.lo) / (axis.hi - axis.lo) * (kPlotBottom - kPlotTop);
}

std::string line(double x1, double y1, double x2, double y2, const std::string& style) {
  return "<line x1=\"" + coordinate(x1) + "\" y1=\"" + coordinate(y1) + "\" x2=\"" + coordinate(x2) + "\" y2=\"" +
         coordinate(y2) + "\" " + style + "/>\n";
}

std::string text(double x, double y, const std::string& attributes, std::string_view content) {
  const std::string separator = attributes.empty() ? "" : " ";
  return "<text x=\"" + coordinate(x) + "\" y=\"" + coordinate(y) + "\"" + separator + attributes + ">" +
         xml_escape(content) + "</text>\n";
}

void append_grid_and_ticks(std::string& svg, const Axis& x, const Axis& y) {
  const std::string grid = "stroke=\"#e0e0e0\" stroke-width=\"1\"";
  const std::string tick = "stroke=\"#000\" stroke-width=\"1\"";
  for (const Tick& t : x.ticks) {
    const double px = pixel_x(x, t.position);
    svg += line(px, kPlotTop, px, kPlotBottom, grid);
    svg += line(px, kPlotBottom, px, kPlotBottom + 5, tick);
    svg += text(px, kPlotBottom + 20, "text-anchor=\"middle\"", t.label);
  }
  for (const Tick& t : y.ticks) {
    const double py = pixel_y(y, t.position);
    svg += line(kPlotLeft, py, kPlotRight, py, grid);
    svg += line(kPlotLeft - 5, py, kPlotLeft, py, tick);
    svg += text(kPlotLeft - 8, py + 4, "text-anchor=\"end\"", t.label);
  }
  svg += "<rect x=\"" + coordinate(kPlotLeft) + "\" y=\"" + coordinate(kPlotTop) + "\" width=\"" +
         coordinate(kPlotRight - kPlotLeft) + "\" height=\"" + coordinate(kPlotBottom - kPlotTop) +
         "\" fill=\"none\" stroke=\"#000\"/>\n";
}

std::string series_color(const Series& series, size_t index) {
  return xml_escape(series.color.empty() ? kPalette[index % kPalette.size()] : series.color);
}

void append_series(std::string& svg, const Series& series, const std::string& color, const Axis& x, const Axis& y) {
  std::vector<std::pair<double, double>> pixels;
  for (const auto& point : series.points) {
    if (!is_drawable(point, x.log, y.log)) continue;
    const double x_position = x.log ? std::log10(point.first) : point.first;
    const double y_position = y.log ? std::log10(point.second) : point.second;
    pixels.emplace_back(pixel_x(x, x_position), pixel_y(y, y_position));
  }
  if (pixels.size() == 1) {
    svg += "<circle cx=\"" + coordinate(pixels[0].first) + "\" cy=\"" + coordinate(pixels[0].second) +
           "\" r=\"3\" fill=\"" + color + "\"/>\n";
  } else if (pixels.size() > 1) {
    svg += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < pixels.size(); ++i) {
      if (i > 0) svg += ' ';
      svg += coordinate(pixels[i].first) + "," + coordinate(pixels[i].second);
    }
    svg += "\"/>\n";
  }
}

void append_legend(std::string& svg, const std::vector<Series>& series) {
  for (size_t i = 0; i < series.size(); ++i) {
    const double py = kPlotTop + 10 + 20.0 * static_cast<double>(i);
    svg += line(kLegendX, py, kLegendX + 20, py, "stroke=\"" + series_color(series[i], i) + "\" stroke-width=\"3\"");
    svg += text(kLegendX + 26, py + 4, "", series[i].name);
  }
}

void append_labels(std::string& svg, const std::string& title, const std::string& x_label, const std::string& y_label) {
  const double center_x = (kPlotLeft + kPlotRight) / 2;
  const double center_y = (kPlotTop + kPlotBottom) / 2;
  svg += text(center_x, 30, "text-anchor=\"middle\" font-size=\"18\"", title);
  svg += text(center_x, kPlotBottom + 45, "text-anchor=\"middle\" font-size=\"14\"", x_label);
  svg += text(20, center_y,
              "text-anchor=\"middle\" font-size=\"14\" transform=\"rotate(-90 20 " + coordinate(center_y) + ")\"",
              y_label);
}

}  // namespace

std::string svg_line_plot(const std::vector<Series>& series, const std::string& title, const std::string& x_label,
                          const std::string& y_label, bool log_y, bool log_x) {
  const auto [x_bounds, y_bounds] = data_bounds(series, log_x, log_y);
  const Axis x = log_x ? log_axis(x_bounds) : linear_axis(x_bounds);
  const Axis y = log_y ? log_axis(y_bounds) : linear_axis(y_bounds);

  const std::string width = std::to_string(kWidth);
  const std::string height = std::to_string(kHeight);
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + width + "\" height=\"" + height +
                    "\" viewBox=\"0 0 " + width + " " + height + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n";
  append_grid_and_ticks(svg, x, y);
  for (size_t i = 0; i < series.size(); ++i) {
    append_series(svg, series[i], series_color(series[i], i), x, y);
  }
  if (x_bounds.empty()) {
    svg += text((kPlotLeft + kPlotRight) / 2, (kPlotTop + kPlotBottom) / 2, "text-anchor=\"middle\" fill=\"#888\"",
                "no data");
  }
  append_legend(svg, series);
  append_labels(svg, title, x_label, y_label);
  svg += "</svg>\n";
  return svg;
}

}  // namespace sessa::apps
