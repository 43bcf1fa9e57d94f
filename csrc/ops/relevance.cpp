// Schemas of the StyleCLIP relevance ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vmd_fast, m) {
  // Returns (ds (A, C), divisor (A,)): ds[a] = u[a] / divisor[a] with
  // u = (dt @ M.T) * 1(|dt @ M.T| >= threshold) * channel_scale.
  m.def(
      "relevance_directions(Tensor M, Tensor dt, float threshold, str normalize, "
      "Tensor? channel_scale) -> (Tensor, Tensor)");
  // Dense:  M += style_deltas.T @ normalize_rows(clip_deltas)
  // Sparse: M[channel_index[b]] += style_deltas[b] * normalize(clip_deltas[b])
  m.def(
      "relevance_accumulate_(Tensor(a!) M, Tensor style_deltas, Tensor clip_deltas, "
      "Tensor? channel_index, bool normalize) -> ()");
}
