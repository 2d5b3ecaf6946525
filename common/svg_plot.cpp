#include "common/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <tuple>

namespace stride {

namespace {

// Nice axis bounds: [lo, hi] widened to round numbers.
std::pair<double, double> bounds(double lo, double hi) {
  if (!(hi > lo)) return {lo - 1, hi + 1};
  const double step = std::pow(10.0, std::floor(std::log10(hi - lo)));
  return {std::floor(lo / step) * step, std::ceil(hi / step) * step};
}

std::string format(const char* fmt, double v) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// Viridis-like ramp through five anchors, t in [0, 1].
std::string colour(double t) {
  static const double kAnchors[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 1.0, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  char buf[16];
  int rgb[3];
  for (int c = 0; c < 3; ++c) rgb[c] = static_cast<int>(kAnchors[i][c] + f * (kAnchors[i + 1][c] - kAnchors[i][c]));
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

}  // namespace

std::string svg_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '&') {
      out += "&amp;";
    } else if (c == '"') {
      out += "&quot;";
    } else {
      out += c;
    }
  }
  return out;
}

std::string render_line_svg(const std::vector<LinePanel>& panels, const LineAxes& axes) {
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};
  const int pw = 380, ph = 280, ml = 58, mr = 12, mt = 28, mb = 40;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << pw * panels.size() << "\" height=\"" << ph + 24
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t p = 0; p < panels.size(); ++p) {
    const auto& title = panels[p].title;
    const auto& curves = panels[p].curves;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& c : curves) {
      for (const auto& [x, y] : c.points) {
        if (!std::isfinite(y)) continue;
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
    }
    if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    std::tie(y0, y1) = bounds(y0, y1);
    if (!(x1 > x0)) x1 = x0 + 1;
    const double left = pw * static_cast<double>(p) + ml, width = pw - ml - mr, height = ph - mt - mb;
    auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * width; };
    auto Y = [&](double y) { return mt + (1 - (y - y0) / (y1 - y0)) * height; };
    o << "<text x=\"" << left + width / 2 << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">" << svg_escape(title)
      << "</text>\n<rect x=\"" << left << "\" y=\"" << mt << "\" width=\"" << width << "\" height=\"" << height
      << "\" fill=\"none\" stroke=\"#888\"/>\n";
    for (int t = 0; t <= 4; ++t) {
      const double yv = y0 + (y1 - y0) * t / 4, xv = x0 + (x1 - x0) * t / 4;
      o << "<text x=\"" << left - 4 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << format("%.4g", yv)
        << "</text>\n"
        << "<text x=\"" << X(xv) << "\" y=\"" << mt + height + 14 << "\" text-anchor=\"middle\">"
        << format(axes.x_format.c_str(), xv) << "</text>\n";
    }
    o << "<text x=\"" << left + width / 2 << "\" y=\"" << mt + height + 30 << "\" text-anchor=\"middle\">"
      << svg_escape(axes.x_label) << "</text>\n";
    for (size_t c = 0; c < curves.size(); ++c) {
      const char* color = kColors[c % (sizeof(kColors) / sizeof(kColors[0]))];
      if (!curves[c].points.empty()) {
        o << "<polyline class=\"curve\" data-run=\"" << svg_escape(curves[c].label) << "\" fill=\"none\" stroke=\""
          << color << "\" stroke-width=\"1.5\" points=\"";
        for (const auto& [x, y] : curves[c].points) {
          if (std::isfinite(y)) o << X(x) << "," << Y(std::clamp(y, y0, y1)) << " ";
        }
        o << "\"/>\n";
      }
      o << "<text x=\"" << left + 6 << "\" y=\"" << mt + 14 + 13 * c << "\" fill=\"" << color << "\">"
        << svg_escape(curves[c].label) << "</text>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

std::string render_heatmap_svg(const std::vector<HeatmapPanel>& panels, double clip) {
  const int pw = 340, ph = 340, ml = 48, mr = 12, mt = 40, mb = 40;
  double lo = 1e300, hi = -1e300;
  for (const auto& p : panels) {
    for (const auto& row : p.z) {
      for (double v : row) {
        if (!std::isfinite(v)) continue;
        lo = std::min(lo, v);
        hi = std::max(hi, clip > 0 ? std::min(v, clip) : v);
      }
    }
  }
  if (lo > hi) lo = 0, hi = 1;
  if (!(hi > lo)) hi = lo + 1;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << pw * panels.size() << "\" height=\"" << ph + 24
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t p = 0; p < panels.size(); ++p) {
    const auto& h = panels[p];
    const double left = pw * static_cast<double>(p) + ml, width = pw - ml - mr, height = ph - mt - mb;
    o << "<text x=\"" << left + width / 2 << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">"
      << svg_escape(h.title) << "</text>\n<text x=\"" << left + width / 2
      << "\" y=\"32\" text-anchor=\"middle\">colour: " << format("%.4g", lo) << " (dark) to " << format("%.4g", hi)
      << (clip > 0 ? "+" : "") << " (yellow)</text>\n";
    const size_t nx = h.x.size(), ny = h.y.size();
    if (nx == 0 || ny == 0) continue;
    const double cw = width / static_cast<double>(nx), chh = height / static_cast<double>(ny);
    for (size_t i = 0; i < ny && i < h.z.size(); ++i) {
      for (size_t j = 0; j < nx && j < h.z[i].size(); ++j) {
        const double v = h.z[i][j];
        // Row 0 (the lowest y) at the bottom, as a plot reads.
        o << "<rect class=\"cell\" x=\"" << left + cw * static_cast<double>(j) << "\" y=\""
          << mt + height - chh * static_cast<double>(i + 1) << "\" width=\"" << cw + 0.5 << "\" height=\"" << chh + 0.5
          << "\" fill=\"" << colour((v - lo) / (hi - lo)) << "\"><title>" << format("%.4g", v) << "</title></rect>\n";
      }
    }
    for (int t = 0; t <= 2; ++t) {
      const size_t jx = (nx - 1) * static_cast<size_t>(t) / 2, iy = (ny - 1) * static_cast<size_t>(t) / 2;
      o << "<text x=\"" << left + cw * (static_cast<double>(jx) + 0.5) << "\" y=\"" << mt + height + 14
        << "\" text-anchor=\"middle\">" << format("%.3g", h.x[jx]) << "</text>\n<text x=\"" << left - 4 << "\" y=\""
        << mt + height - chh * (static_cast<double>(iy) + 0.5) + 4 << "\" text-anchor=\"end\">"
        << format("%.3g", h.y[iy]) << "</text>\n";
    }
    o << "<text x=\"" << left + width / 2 << "\" y=\"" << mt + height + 30
      << "\" text-anchor=\"middle\">alpha (direction 1); beta (direction 2) upward</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace stride
