// Schemas of the update-step ops (SIA's projected sign step, ZOOM's clamped step).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vmd_fast, m) {
  m.def(
      "projected_sign_step(Tensor x, Tensor grad, Tensor origin, Tensor step, Tensor eps, "
      "float lo, float hi) -> Tensor");
  m.def(
      "projected_sign_step_(Tensor(a!) x, Tensor grad, Tensor origin, Tensor step, "
      "Tensor eps, float lo, float hi) -> ()");
  m.def(
      "projected_sign_step_out(Tensor x, Tensor grad, Tensor origin, Tensor step, "
      "Tensor eps, float lo, float hi, Tensor(a!) out) -> ()");
  m.def("clamp_gd_step(Tensor w, Tensor grad, Tensor lr, Tensor eps) -> Tensor");
  m.def("clamp_gd_step_(Tensor(a!) w, Tensor grad, Tensor lr, Tensor eps) -> ()");
  m.def(
      "clamp_gd_step_out(Tensor w, Tensor grad, Tensor lr, Tensor eps, Tensor(a!) out) -> ()");
}
