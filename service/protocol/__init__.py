"""The Open Inference Protocol (KServe v2) wire format, free of any web framework."""
