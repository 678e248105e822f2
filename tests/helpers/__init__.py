"""Helpers the tests and the benchmarks share: a live server, GeoTIFFs, request bodies.

They import httpx, numpy and rasterio, never pytest, so ``bench`` can use them too.
"""
