#include "cli/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "cli/commands.h"

namespace loco::cli {
namespace {

std::string escapeXml(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out.push_back(c);
  }
  return out;
}

// About five round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi - lo;
  if (!(span > 0)) return {lo};
  const double raw = span / 5;
  const double mag = std::pow(10, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9 && out.size() < 12; t += step)
    out.push_back(t);
  return out;
}

std::string tickLabel(double v) {
  const double a = std::abs(v);
  if (a < 1e-9) return "0";
  if (a >= 1e9) return fmt::format("{:g}G", v / 1e9);
  if (a >= 1e6) return fmt::format("{:g}M", v / 1e6);
  if (a >= 1e4) return fmt::format("{:g}k", v / 1e3);
  return fmt::format("{:g}", v);
}

}  // namespace

Status writeSvgPlot(const std::string& path, const std::string& title, const std::string& x_label,
                    const std::string& y_label, const std::vector<PlotSeries>& series,
                    const PlotExtras& extras) {
  const bool timeline = !extras.right.empty() || !extras.markers.empty();
  const double W = timeline ? 960 : 720, H = timeline ? 470 : 440, L = 70,
               R = extras.right.empty() ? 20 : 70, T = 40, B = timeline ? 90 : 60;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  double r0 = x0, r1 = -x0;
  for (const auto& s : series) {
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  for (const auto& s : extras.right) {
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), r0 = std::min(r0, y), r1 = std::max(r1, y);
    }
  }
  for (const auto& m : extras.markers) x0 = std::min(x0, m.from), x1 = std::max(x1, m.to);
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };

  std::string svg = fmt::format(
      R"svg(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">)svg"
      "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      R"svg(<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>)svg"
      "\n",
      W, H, W / 2, escapeXml(title));
  for (double t : ticks(x0, x1)) {
    svg += fmt::format(
        R"svg(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="#ddd"/><text x="{0:.1f}" y="{3}" text-anchor="middle">{4}</text>)svg"
        "\n",
        px(t), T, H - B, H - B + 16, tickLabel(t));
  }
  for (double t : ticks(y0, y1)) {
    svg += fmt::format(
        R"svg(<line x1="{0}" y1="{1:.1f}" x2="{2}" y2="{1:.1f}" stroke="#ddd"/><text x="{3}" y="{4:.1f}" text-anchor="end">{5}</text>)svg"
        "\n",
        L, py(t), W - R, L - 6, py(t) + 4, tickLabel(t));
  }
  svg +=
      fmt::format(R"svg(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>)svg"
                  "\n",
                  L, T, W - L - R, H - T - B);
  svg += fmt::format(R"svg(<text x="{}" y="{}" text-anchor="middle">{}</text>)svg"
                     "\n",
                     (L + W - R) / 2, H - B + 42, escapeXml(x_label));
  svg += fmt::format(
      R"svg(<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>)svg"
      "\n",
      (T + H - B) / 2, escapeXml(y_label));
  // The right axis (from 0, whole numbers: world sizes) and its step series.
  if (!extras.right.empty()) {
    r0 = 0;
    if (!std::isfinite(r1) || r1 <= 0) r1 = 1;
    r1 = std::ceil(r1) + 1;
    auto pr = [&](double y) { return H - B - (y - r0) / (r1 - r0) * (H - T - B); };
    for (double t : ticks(r0, r1)) {
      if (t != std::floor(t)) continue;
      svg += fmt::format(R"svg(<text x="{:.1f}" y="{:.1f}">{}</text>)svg"
                         "\n",
                         W - R + 6, pr(t) + 4, tickLabel(t));
    }
    svg += fmt::format(
        R"svg(<text transform="translate({},{}) rotate(90)" text-anchor="middle">{}</text>)svg"
        "\n",
        W - 18, (T + H - B) / 2, escapeXml(extras.right_label));
    for (const auto& s : extras.right) {
      std::string pts;
      std::optional<double> prev_y;
      for (auto [x, y] : s.points) {
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        if (prev_y) pts += fmt::format("{:.1f},{:.1f} ", px(x), pr(*prev_y));
        pts += fmt::format("{:.1f},{:.1f} ", px(x), pr(y));
        prev_y = y;
      }
      svg += fmt::format(
          R"svg(<polyline fill="none" stroke="{}" stroke-width="2" stroke-opacity="0.7" points="{}"/>)svg"
          "\n",
          s.color, pts);
    }
  }
  // Markers: spans shaded, instants as lines, labels staggered so neighbours stay readable.
  int lane = 0;
  for (const auto& m : extras.markers) {
    const double a = px(m.from), b = px(std::max(m.from, m.to));
    if (b - a > 1) {
      svg += fmt::format(
          R"svg(<rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="{}" fill-opacity="0.12"/>)svg"
          "\n",
          a, T, b - a, H - T - B, m.color);
    }
    svg += fmt::format(
        R"svg(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="{3}" stroke-dasharray="4,3"/><text x="{4:.1f}" y="{5}" font-size="10" fill="{3}">{6}</text>)svg"
        "\n",
        a, T, H - B, m.color, a + 3, T + 12 + 11 * lane, escapeXml(m.label));
    lane = (lane + 1) % 6;
  }
  // The legend: top right of a plain plot; a row under a timeline (its top holds the markers).
  double legend_y = timeline ? H - 14 : T + 16;
  double legend_x = timeline ? L : W - R - 150;
  auto legend = [&](const PlotSeries& s) {
    std::string item = fmt::format(
        R"svg(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{3}" stroke-width="2"/><text x="{4}" y="{5}">{6}</text>)svg"
        "\n",
        legend_x, legend_y, legend_x + 25, s.color, legend_x + 30, legend_y + 4, escapeXml(s.name));
    if (timeline) {
      legend_x += 190;
    } else {
      legend_y += 18;
    }
    return item;
  };
  for (const auto& s : series) {
    std::string pts;
    for (auto [x, y] : s.points) {
      if (std::isfinite(x) && std::isfinite(y)) pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
    }
    svg += fmt::format(R"svg(<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>)svg"
                       "\n",
                       s.color, pts);
    svg += legend(s);
  }
  for (const auto& s : extras.right) {
    svg += legend(s);
  }
  svg += "</svg>\n";
  return writeFileAtomic(path, svg);
}

}  // namespace loco::cli
