// Schemas of the packed deformable convolution, torch.ops.dzsr_C.deform_conv2d_{forward,backward},
// one definition for every device: deform_conv_cpu.cpp and deform_conv_cuda.cu only register their
// kernels for it (TORCH_LIBRARY_IMPL). Arguments, layouts and semantics: the backend interface in
// dzsr_kernels/deform_conv/op.py and reference.py; the caller is deform_conv/cpp_kernel.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dzsr_C, m) {
  m.def(
      "deform_conv2d_forward(Tensor x, Tensor geom, bool affine, Tensor weight, Tensor? bias, "
      "int groups) -> Tensor");
  m.def(
      "deform_conv2d_backward(Tensor grad_out, Tensor x, Tensor geom, bool affine, Tensor weight, "
      "int groups) -> (Tensor, Tensor, Tensor)");
}
