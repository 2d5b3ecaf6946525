// Plain SVG charts without a plotting library: line panels (`stride plot`, `stride analyze`) and heatmaps
// (`stride analyze landscape --dims 2`). Pure functions; thread-safe.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace stride {

// One curve of (x, y) points; `label` names it in the legend and in the polyline's data-run attribute.
struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;
};

struct LinePanel {
  std::string title;
  std::vector<Series> curves;
};

struct LineAxes {
  std::string x_label = "step";
  std::string x_format = "%.0f";  // printf format of the x tick labels
};

// An SVG with one panel per entry of `panels`, side by side; every curve is a <polyline class="curve">.
std::string render_line_svg(const std::vector<LinePanel>& panels, const LineAxes& axes = {});

// A grid of values z[row][column] over x (columns) and y (rows), drawn as coloured cells (low: dark blue, high:
// yellow; the colour scale is shared by all panels) with the value range in the title.
struct HeatmapPanel {
  std::string title;
  std::vector<double> x, y;
  std::vector<std::vector<double>> z;  // z[i][j] at (x[j], y[i])
};
// Values above `clip` are drawn in the top colour (loss surfaces explode far from the minimum); clip <= 0: none.
std::string render_heatmap_svg(const std::vector<HeatmapPanel>& panels, double clip = 0.0);

// Text escaped for SVG/XML content.
std::string svg_escape(const std::string& s);

}  // namespace stride
