"""Peer servers of the same footprints model, measured beside attnserve (``bench.peers.run``)."""
