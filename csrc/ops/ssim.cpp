// Schemas of the fused SSIM ops. The Python wrapper (vmd_fast/ops/ssim.py) builds the
// Gaussian window, averages the per-channel values and wires up autograd.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vmd_fast, m) {
  // Returns (ssim (N, C) mean SSIM of every channel, grad_maps (3|4, N, C, Hv, Wv) or (0,)).
  m.def(
      "ssim_forward(Tensor x, Tensor y, float[] window, float C1, float C2, int grad_mode) "
      "-> (Tensor, Tensor)");
  // Windowed moments of reference images: (E[y], E[y^2]), each (R, C, Hv, Wv).
  m.def("ssim_reference_stats(Tensor y, float[] window) -> (Tensor, Tensor)");
  // SSIM of x (B, C, H, W) against cached references y (R, C, H, W), B = k R, x[b] vs
  // y[b // k]; grad_mode 0 or 1 (the references are constants).
  m.def(
      "ssim_cached_forward(Tensor x, Tensor y, Tensor mu_y, Tensor e_yy, float[] window, "
      "float C1, float C2, int grad_mode) -> (Tensor, Tensor)");
  // (grad_x, grad_y) from grad (N, C) of the per-channel SSIM; grad_y is empty when the
  // maps hold only the x partials.
  m.def(
      "ssim_backward(Tensor grad, Tensor x, Tensor y, Tensor grad_maps, float[] window) "
      "-> (Tensor, Tensor)");
}
