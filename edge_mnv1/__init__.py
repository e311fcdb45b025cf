"""edge_mnv1: MobileNetV1 from a PyTorch reference to edge devices through Apache TVM."""

__version__ = "0.1.0"
