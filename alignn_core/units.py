"""Units and sign conventions, stated once.

- Lengths in Å, energies in eV, forces in eV/Å.
- Edge vectors: ``r_ij = x[dst] - x[src] + shift @ cell`` with integer image offsets ``shift``
  and ``cell`` rows the lattice vectors (the ASE/JARVIS convention).
- Stress inside models and in training targets: GPa, ``sigma = (1/V) dE/d(strain)``, so a
  cell under tension has positive stress (ASE's sign). ASE wants eV/Å^3: divide by
  :data:`EV_PER_A3_TO_GPA`.
- Energy targets in ``id_prop.json`` are per atom when ``energy_mult_natoms`` is true.
"""

EV_PER_A3_TO_GPA = 160.21766208
"""1 eV/Å^3 expressed in GPa (the factor upstream ALIGNN uses)."""
