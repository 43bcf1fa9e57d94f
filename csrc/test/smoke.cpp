// Calls every vmd_fast op through the dispatcher from C++ (libtorch users' view), and
// checks the results against plain ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <iostream>
#include <tuple>
#include <vector>

namespace {

template <typename Signature>
auto op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

bool close(const at::Tensor& a, const at::Tensor& b, double tol) {
  return at::allclose(a, b, /*rtol=*/0, /*atol=*/tol);
}

}  // namespace

int main() {
  at::manual_seed(0);
  int failures = 0;
  auto expect = [&](bool ok, const char* what) {
    std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
    failures += ok ? 0 : 1;
  };

  const auto x = at::rand({4, 3, 16, 16});
  const auto grad = at::randn({4, 3, 16, 16});
  const auto step = at::full({}, 0.01, at::kDouble);
  const auto eps = at::full({}, 0.02, at::kDouble);
  auto stepped = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, double, double)>(
                     "vmd_fast::projected_sign_step")
                     .call(x, grad, x, step, eps, 0.0, 1.0);
  const auto want = at::clamp(x + 0.01 * at::sign(grad), x - 0.02, x + 0.02).clamp(0, 1);
  expect(close(stepped, want, 1e-6), "projected_sign_step");

  std::vector<double> window(11);
  double total = 0;
  for (int i = 0; i < 11; ++i) total += window[i] = std::exp(-(i - 5.0) * (i - 5.0) / (2 * 1.5 * 1.5));
  for (auto& w : window) w /= total;
  auto [ssim, maps] =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                            c10::ArrayRef<double>, double, double, int64_t)>(
          "vmd_fast::ssim_forward")
          .call(x, x, window, 1e-4, 9e-4, 0);
  expect(close(ssim, at::ones({4, 3}), 1e-6), "ssim_forward (identical images give 1)");

  const auto e = at::randn({5, 7});
  auto [loss, ge, go] =
      op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                        double, int64_t)>(
          "vmd_fast::clip_consistency_forward")
          .call(e, e, 1.0, 1);
  const auto entropy = -(at::softmax(e, 1) * at::log_softmax(e, 1)).sum(1);
  expect(close(loss, entropy, 1e-5) && close(ge, at::zeros_like(e), 1e-6), "clip_consistency");

  const auto M = at::randn({20, 8});
  const auto dt = at::randn({3, 8});
  auto [ds, divisor] =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                            c10::string_view, const std::optional<at::Tensor>&)>(
          "vmd_fast::relevance_directions")
          .call(M, dt, 0.0, "l2", std::nullopt);
  expect(close(ds.norm(2, {1}), at::ones({3}), 1e-5), "relevance_directions");

  std::cout << (failures == 0 ? "all ops ok" : "failures") << std::endl;
  return failures == 0 ? 0 : 1;
}
