// Schema of the local sliced-Wasserstein (LOSW) loss, torch.ops.dzsr_C.local_sliced_wasserstein_
// forward, one definition for every device, with a CPU kernel (local_sliced_wasserstein_cpu.cpp)
// and a CUDA kernel (local_sliced_wasserstein_cuda.cu; docs/design.md#local-sliced-wasserstein);
// the backward is the global loss's device-generic GEMM, sliced_wasserstein_backward. Arguments,
// layouts and semantics: the op docstring of dzsr_kernels/local_sliced_wasserstein/op.py and
// reference.py; the caller is local_sliced_wasserstein/cpp_kernel.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def(
      "local_sliced_wasserstein_forward(Tensor u, Tensor v, Tensor proj, int window, int stride, "
      "bool need_v_count) -> (Tensor, Tensor, Tensor)");
}
