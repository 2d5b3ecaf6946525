# cmake -DIN=dashboard.html -DOUT=dashboard_html.h -P embed_html.cmake
file(READ "${IN}" content)
file(WRITE "${OUT}" "// Generated from cluster/dashboard.html by cluster/embed_html.cmake. Do not edit.\n#pragma once\n\nnamespace stride::cluster {\ninline constexpr char kDashboardHtml[] = R\"html(${content})html\";\n}  // namespace stride::cluster\n")
