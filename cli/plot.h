#pragma once
// Minimal SVG line plots for `loco local`'s loss curves: no plotting library to install.

#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::cli {

struct PlotSeries {
  std::string name;
  std::string color;                              // CSS colour
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are skipped
};

// Writes one plot (axes with ticks, a legend, one polyline per series) to `path` atomically.
Status writeSvgPlot(const std::string& path, const std::string& title, const std::string& x_label,
                    const std::string& y_label, const std::vector<PlotSeries>& series);

}  // namespace loco::cli
