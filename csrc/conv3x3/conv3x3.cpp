// Schema of the 3x3 convolution (stride 1, zero padding 1, no groups), torch.ops.dzsr_C.conv3x3,
// with a CPU kernel only (conv3x3_cpu.cpp: Winograd F(4x4, 3x3)). On CUDA cuDNN already picks
// Winograd or implicit-GEMM kernels, so there is no CUDA kernel; the caller,
// dzsr_kernels/conv3x3/cpp_kernel.py, runs the reference there. Arguments, layouts and semantics:
// the op docstring of dzsr_kernels/conv3x3/op.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def(
      "conv3x3(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, float? negative_slope) -> "
      "Tensor");
}
