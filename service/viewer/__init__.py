"""A small web viewer for jobs: upload form, layers as overlays, attention charts."""
