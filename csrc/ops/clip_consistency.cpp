// Schema of the fused CLIP-consistency loss.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vmd_fast, m) {
  // Returns (loss (B,), d loss_b / d edit (B, K) or (0,), d loss_b / d orig (B, K) or (0,)).
  m.def(
      "clip_consistency_forward(Tensor image_logits_edit, Tensor image_logits_orig, "
      "float temperature, int grad_mode) -> (Tensor, Tensor, Tensor)");
}
