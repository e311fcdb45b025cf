"""ONNX -> Relax -> scheduled kernels -> a device program."""

from edge_mnv1.compiler import cpu_intrinsics

cpu_intrinsics.install()  # before anything imports TVM's tensor intrinsics
