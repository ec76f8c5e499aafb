// The CUDA deformable-conv kernels and their host code, built for CPU threads (cuda_emulation.h)
// and registered as torch.ops.dzsr_cuda_emu.deform_conv2d_{forward,backward} for the emulation
// tests.
#define DZSR_CUDA_EMULATION
#include "deform_conv/deform_conv_cuda.cu"

TORCH_LIBRARY(dzsr_cuda_emu, m) {
  m.def(
      "deform_conv2d_forward(Tensor x, Tensor geom, bool affine, Tensor weight, Tensor? bias, "
      "int groups) -> Tensor",
      &dzsr::deform::deform_conv2d_forward_cuda);
  m.def(
      "deform_conv2d_backward(Tensor grad_out, Tensor x, Tensor geom, bool affine, Tensor weight, "
      "int groups) -> (Tensor, Tensor, Tensor)",
      &dzsr::deform::deform_conv2d_backward_cuda);
}
