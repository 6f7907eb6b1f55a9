#pragma once
// The coordinator's dashboard (cli/ops/dashboard.html, embedded at build time): one
// self-contained page that polls /api/status.

#include <string_view>

namespace loco::ops {

std::string_view dashboardHtml();

}  // namespace loco::ops
