"""Graph construction for the torch backend: neighbour search, line graphs, ``AtomGraph``.

``graph`` holds the container and batching; ``neighbors`` the O(N) periodic search; ``strategies``
upstream's edge sets (pure_torch, k-nearest, radius_graph); ``line_graph`` triplets and the angle
cosine the model reuses; ``backend`` the GraphBackend plugin object.
"""

from alignn_torch.graphs.backend import TorchGraphBackend, build_graph
from alignn_torch.graphs.graph import AtomGraph, collate_graphs
from alignn_torch.graphs.line_graph import angle_cosines, line_graph_triplets

__all__ = [
    "AtomGraph",
    "TorchGraphBackend",
    "angle_cosines",
    "build_graph",
    "collate_graphs",
    "line_graph_triplets",
]
