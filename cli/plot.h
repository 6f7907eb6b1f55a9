#pragma once
// Minimal SVG line plots for `loco local`'s loss curves and `loco chaos`'s timeline: no plotting
// library to install.

#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::cli {

struct PlotSeries {
  std::string name;
  std::string color;                              // CSS colour
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are skipped
};

// A mark on the x axis: a vertical line (to == from) or a shaded span, with a label at the top.
struct PlotMarker {
  double from = 0, to = 0;
  std::string label;
  std::string color;
};

// What a timeline adds to a plain plot: series on a right-hand axis of their own (drawn as
// steps: the value holds until the next point) and markers.
struct PlotExtras {
  std::vector<PlotSeries> right;
  std::string right_label;
  std::vector<PlotMarker> markers;
};

// Writes one plot (axes with ticks, a legend, one polyline per series) to `path` atomically.
Status writeSvgPlot(const std::string& path, const std::string& title, const std::string& x_label,
                    const std::string& y_label, const std::vector<PlotSeries>& series,
                    const PlotExtras& extras = {});

}  // namespace loco::cli
