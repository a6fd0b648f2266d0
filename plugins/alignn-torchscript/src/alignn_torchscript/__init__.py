"""TorchScript export of ``alignn_atomwise_pure`` (and ``_smooth``) models for libtorch hosts.

``alignn export torchscript RUN_DIR -o model.pt`` writes a self-contained file whose
``forward_tensors_z(positions, lattice, atomic_numbers, src, dst, shift, compute_stress)``
returns energy, forces and stress; see ``docs/export.md``.
"""

__version__ = "0.1.0"
