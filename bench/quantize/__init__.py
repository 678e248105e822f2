"""INT8 against FP32 on CPU (``python -m bench.quantize``)."""
