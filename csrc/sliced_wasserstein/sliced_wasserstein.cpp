// Schemas of the sliced-Wasserstein loss, torch.ops.dzsr_C.sliced_wasserstein_{forward,backward},
// one definition for every device. The forward has a CPU kernel (sliced_wasserstein_cpu.cpp) and a
// CUDA kernel (sliced_wasserstein_cuda.cu); the backward is one device-generic kernel of ATen ops
// (CompositeExplicitAutograd, in sliced_wasserstein_cpu.cpp). Arguments, layouts and semantics:
// the op docstring of dzsr_kernels/sliced_wasserstein/op.py and reference.py; the caller is
// sliced_wasserstein/cpp_kernel.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def(
      "sliced_wasserstein_forward(Tensor u, Tensor v, Tensor proj, bool need_v_sign) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("sliced_wasserstein_backward(Tensor sign, Tensor proj_scaled) -> Tensor");
}
