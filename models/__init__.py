"""PyTorch architectures, data, training and ONNX export for attnserve's models.

Importing this package pulls in no torch; the submodules that need it do.
"""
