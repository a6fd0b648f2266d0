"""The module inside an exported file: ``alignn_atomwise_pure`` (or ``_smooth``) driven by a host's
neighbour list.

:class:`ExportedALIGNN` subclasses the eager :class:`ALIGNNAtomWisePure` so that the exported
file runs *the same* tensor-only helpers (``_node_features``, ``_energies``,
``_forces_and_stress``) as training and evaluation do; only the entry point differs. The eager
``forward`` takes an ``AtomGraph`` built by our graph backend, which TorchScript cannot compile
and a C++ host cannot build, so the subclass replaces it by ``forward_tensors_z``: positions,
lattice, atomic numbers and a neighbour list, nothing else.

What the graph backend does in eager mode is redone here from the host's list, identically:

* edges are (re)selected by the model's own cutoff rule (``min_distance_sq < d² <= cutoff²``
  in float64, like the backend), so a host may pass a superset, e.g. a LAMMPS list with skin;
* ``pure_torch``'s ``max_neighbors`` cap keeps the K nearest per source with the backend's
  tie-break (distance quantised to 1e-8 Å, then ``dst``, then ``shift``), so a host may leave
  the cap to the model;
* ``radius_graph`` models raise instead of silently differing when an atom has no neighbour
  (eager mode would have grown the cutoff by ``cutoff_extra``);
* the line graph is rebuilt with :func:`alignn_torch.graphs.line_graph.line_graph_triplets`
  (scriptable as written) restricted to bonds ``<= three_body_cutoff``;
* atom features come from the baked-in ``_species_table`` (float64 table cast once, as the
  backend casts its float64 features), unknown elements raise as the backend's do.

Every quantity the host sees is float64 geometry cast to the model dtype exactly where eager
mode casts it, so eager and exported results agree to float rounding of the index sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from alignn_torch.config import ALIGNNAtomWisePureConfig
from alignn_torch.graphs.line_graph import angle_cosines, line_graph_triplets
from alignn_torch.model.alignn_atomwise_pure import SPECIES_TABLE_ROWS, ALIGNNAtomWisePure
from alignn_torch.model.alignn_atomwise_pure_smooth import ALIGNNAtomWisePureSmooth


@dataclass(frozen=True)
class NeighborContract:
    """How the exported model selects its edges from a host's list (see the module docstring).

    ``max_neighbors`` 0 means no cap; ``three_body_cutoff`` None means every pair of edges
    sharing an atom forms a triplet; ``require_neighbor`` makes an atom without any edge an
    error (radius_graph would have grown the cutoff in eager mode).
    """

    strategy: str
    cutoff: float
    min_distance_sq: float
    max_neighbors: int
    three_body_cutoff: float | None
    require_neighbor: bool
    cutoff_extra: float
    line_graph: bool
    tie_tolerance: float


def stable_lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Permutation sorting rows by ``keys[0]``, then ``keys[1]``, ... (all stable, 1-d int64)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for position in range(len(keys) - 1, -1, -1):
        key = keys[position]
        order = order[torch.argsort(key[order], stable=True)]
    return order


def cap_nearest_mask(
    src: torch.Tensor,
    dst: torch.Tensor,
    shift: torch.Tensor,
    distance: torch.Tensor,
    num_atoms: int,
    k: int,
    tie_tolerance: float,
) -> torch.Tensor:
    """Bool mask keeping the ``k`` nearest edges of every source (``pure_torch``'s cap).

    Order within a source is the backend's ``(distance quantised to tie_tolerance, dst,
    shift)``, so equidistant neighbours at the K-th place are chosen as in eager mode whatever
    order the host listed them in. Sources with at most ``k`` edges keep them all (a list the
    host already capped passes through unchanged).
    """
    num_edges = src.shape[0]
    keep = torch.ones(num_edges, dtype=torch.bool, device=src.device)
    if num_edges == 0 or k <= 0:
        return keep
    counts = torch.bincount(src, minlength=num_atoms)
    if int(counts.max()) <= k:
        return keep
    quantised = torch.floor(distance / tie_tolerance).to(torch.int64)
    image = torch.round(shift).to(torch.int64)
    largest = int(image.abs().max())
    base = 2 * largest + 1
    top_q = int(quantised.max()) + 1
    limit = 2**62
    if num_atoms * top_q < limit and num_atoms * base**3 < limit:
        # Two packed keys instead of six: same order, a third of the sorting work.
        code = (image[:, 0] + largest) * base * base + (image[:, 1] + largest) * base
        code = code + image[:, 2] + largest
        order = stable_lexsort([src * top_q + quantised, dst * base**3 + code])
    else:
        order = stable_lexsort([src, quantised, dst, image[:, 0], image[:, 1], image[:, 2]])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(num_edges, device=src.device) - starts[src[order]]
    keep[order] = rank < k
    return keep


class ExportedALIGNN(ALIGNNAtomWisePure):
    """``alignn_atomwise_pure`` with a tensor-only entry point for TorchScript hosts.

    Build it with :meth:`from_model` (weights, species table and neighbour contract of a trained
    eager model), then ``torch.jit.script`` it. ``forward`` and ``forward_tensors_z`` are the
    same call; ``forward`` keeps upstream's exported signature so upstream hosts work too.
    """

    def __init__(
        self, config: ALIGNNAtomWisePureConfig, contract: NeighborContract, metadata: str
    ) -> None:
        super().__init__(config)
        # Plain typed attributes become TorchScript module attributes: a C++ host reads them
        # with module.attr("cutoff") without parsing the metadata JSON.
        self.neighbor_strategy: str = contract.strategy
        self.cutoff: float = float(contract.cutoff)
        self.cutoff_sq: float = float(contract.cutoff) ** 2
        self.min_distance_sq: float = float(contract.min_distance_sq)
        self.max_neighbors: int = int(contract.max_neighbors)
        # The *effective* triplet bond limit (inf: every triplet), overriding the parent's copy
        # of model.three_body_cutoff, which k-nearest/radius_graph graphs ignore.
        limit = contract.three_body_cutoff
        self.three_body_cutoff = float("inf") if limit is None else float(limit)
        self.require_neighbor: bool = contract.require_neighbor
        self.cutoff_extra: float = float(contract.cutoff_extra)
        self.uses_line_graph: bool = contract.line_graph and config.alignn_layers > 0
        self.tie_tolerance: float = float(contract.tie_tolerance)
        self.metadata_json: str = metadata
        # Not persistent: state dicts stay upstream-shaped; torch.jit.save still stores it.
        self.register_buffer(
            "_species_known", torch.zeros(SPECIES_TABLE_ROWS, dtype=torch.bool), persistent=False
        )

    @classmethod
    def from_model(
        cls,
        model: ALIGNNAtomWisePure,
        contract: NeighborContract,
        species_table: torch.Tensor,
        species_known: torch.Tensor,
        metadata: str,
        dtype: torch.dtype,
    ) -> ExportedALIGNN:
        """Copy ``model``'s weights into a new exportable module of ``dtype`` (eval mode).

        The species table is set *after* the cast, so a float64 export holds the float64 table
        (as the backend's float64 graphs do) instead of a float32-rounded one.
        """
        exported = cls(model.config, contract, metadata).to(dtype)
        state = {
            key: value.to(dtype) if value.is_floating_point() else value
            for key, value in model.state_dict().items()
        }
        exported.load_state_dict(state)
        exported.set_species_table(species_table)
        rows = min(int(species_known.shape[0]), SPECIES_TABLE_ROWS)
        with torch.no_grad():
            exported._species_known.zero_()
            exported._species_known[:rows] = species_known[:rows].to(torch.bool)
        return exported.eval()

    # ------------------------------------------------------------------ host entry points
    @torch.jit.export
    def metadata(self) -> str:
        """The export's metadata JSON (also stored as the extra file ``metadata.json``)."""
        return self.metadata_json

    def forward(  # type: ignore[override]
        self,
        positions: torch.Tensor,
        lattice: torch.Tensor,
        atomic_numbers: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        shift: torch.Tensor,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Same as :meth:`forward_tensors_z` (upstream's exported ``forward`` signature)."""
        return self.forward_tensors_z(
            positions, lattice, atomic_numbers, src, dst, shift, compute_stress
        )

    @torch.jit.export
    def forward_tensors_z(
        self,
        positions: torch.Tensor,
        lattice: torch.Tensor,
        atomic_numbers: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        shift: torch.Tensor,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy (eV, 0-d), forces [N, 3] (eV/Å) and, if asked, stress [3, 3] (GPa, tensile
        positive) of one structure.

        positions [N, 3] Å; lattice [3, 3] Å, rows are cell vectors; atomic_numbers [N] int64;
        src, dst [E] int64 and shift [E, 3] integer cell offsets (any dtype) of a full directed
        neighbour list, r = positions[dst] - positions[src] + shift @ lattice. Edges outside
        the model's cutoff are ignored and ``max_neighbors`` is applied here, so the list may
        be a superset. Grad mode is switched on internally (``torch.no_grad`` callers are fine;
        ``inference_mode`` is not, autograd is needed for the forces).
        """
        num_atoms = positions.shape[0]
        self._check_inputs(positions, lattice, atomic_numbers, src, dst, shift)
        dtype = self.fc.weight.dtype
        pos64 = positions.to(torch.float64)
        lat64 = lattice.to(torch.float64)
        r64 = pos64[dst] - pos64[src] + torch.matmul(shift.to(torch.float64), lat64)  # [E, 3]
        d2 = (r64 * r64).sum(dim=1)
        keep = torch.nonzero((d2 > self.min_distance_sq) & (d2 <= self.cutoff_sq)).squeeze(1)
        src, dst, shift, r64 = src[keep], dst[keep], shift[keep], r64[keep]
        distance64 = torch.sqrt(d2[keep])
        if self.max_neighbors > 0:
            capped = torch.nonzero(
                cap_nearest_mask(
                    src, dst, shift, distance64, num_atoms, self.max_neighbors, self.tie_tolerance
                )
            ).squeeze(1)
            src, dst, r64, distance64 = src[capped], dst[capped], r64[capped], distance64[capped]
        if self.require_neighbor and num_atoms > 0:
            lonely = torch.nonzero(torch.bincount(src, minlength=num_atoms) == 0)
            if lonely.shape[0] > 0:
                raise ValueError(
                    "atom "
                    + str(int(lonely[0, 0]))
                    + " has no neighbour within the cutoff of "
                    + str(self.cutoff)
                    + " A; this radius_graph model grew the cutoff by cutoff_extra in training"
                    + " (upstream's rule), which a fixed neighbour list cannot reproduce"
                )

        lg_src = torch.zeros(0, dtype=torch.long, device=src.device)
        lg_dst = lg_src
        if self.uses_line_graph:
            allowed: torch.Tensor | None = None
            if self.three_body_cutoff < self.cutoff:
                allowed = distance64 <= self.three_body_cutoff
            self_pairs = self.neighbor_strategy == "pure_torch"  # the backend's rule
            lg_src, lg_dst = line_graph_triplets(src, dst, allowed, self_pairs)

        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        r = r64.to(dtype).detach().requires_grad_(True)  # leaf: dE/dr are the pair forces
        if self.lg_on_fly:
            lg_cos = torch.zeros(0, dtype=dtype, device=r.device)
        else:  # stored cosines in eager mode: no gradient through the angles, same here
            lg_cos = angle_cosines(r.detach(), lg_src, lg_dst)
        features = self._species_table.index_select(0, atomic_numbers)
        x = self._node_features(features, r, src, dst, lg_src, lg_dst, lg_cos)
        node_graph = torch.zeros(num_atoms, dtype=torch.long, device=x.device)
        n_atoms = torch.full((1,), num_atoms, dtype=torch.long, device=x.device)
        # eager's readout; [1]: output_features == 1 is checked at export
        out, _ = self._readout(x, features, node_graph, n_atoms)
        edge_graph = torch.zeros(src.shape[0], dtype=torch.long, device=x.device)
        out, energy = self._energies(
            out, torch.linalg.norm(r, dim=1), atomic_numbers, src, dst, edge_graph, n_atoms
        )
        volume = torch.abs(torch.linalg.det(lat64)).reshape(1)
        forces, stress = self._forces_and_stress(
            energy, r, src, dst, edge_graph, n_atoms, volume, num_atoms, compute_stress, False
        )
        torch.set_grad_enabled(grad_was_enabled)
        result: dict[str, torch.Tensor] = {
            "energy": energy[0].detach(),
            "forces": forces.detach(),
        }
        if stress is not None:
            result["stress"] = stress[0].detach()
        return result

    def _check_inputs(
        self,
        positions: torch.Tensor,
        lattice: torch.Tensor,
        atomic_numbers: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        shift: torch.Tensor,
    ) -> None:
        """Shapes, index ranges and known elements, so a host mistake is a clear message
        instead of a wrong energy or an opaque indexing error deep inside a layer."""
        num_atoms = positions.shape[0]
        num_edges = src.numel()
        shapes_ok = (
            positions.dim() == 2
            and positions.shape[1] == 3
            and lattice.dim() == 2
            and lattice.shape[0] == 3
            and lattice.shape[1] == 3
            and atomic_numbers.dim() == 1
            and atomic_numbers.shape[0] == num_atoms
            and src.dim() == 1
            and dst.dim() == 1
            and dst.shape[0] == num_edges
            and shift.dim() == 2
            and shift.shape[0] == num_edges
            and shift.shape[1] == 3
        )
        if not shapes_ok:
            raise ValueError(
                "expected positions [N, 3], lattice [3, 3], atomic_numbers [N], src [E], dst [E], "
                "shift [E, 3]; got "
                + str(
                    [
                        positions.shape,
                        lattice.shape,
                        atomic_numbers.shape,
                        src.shape,
                        dst.shape,
                        shift.shape,
                    ]
                )
            )
        if atomic_numbers.dtype != torch.long or src.dtype != torch.long or dst.dtype != torch.long:
            raise ValueError("atomic_numbers, src and dst must be int64 tensors")
        if num_atoms > 0:
            low = int(atomic_numbers.min())
            high = int(atomic_numbers.max())
            if low < 0 or high >= self._species_known.shape[0]:
                raise ValueError("atomic number out of range: " + str(low) + ".." + str(high))
            unknown = torch.nonzero(~self._species_known.index_select(0, atomic_numbers))
            if unknown.shape[0] > 0:
                z = int(atomic_numbers[int(unknown[0, 0])])
                raise ValueError(
                    "element with atomic number " + str(z) + " has no atom features in this model"
                )
        if num_edges > 0:
            lowest = int(torch.minimum(src.min(), dst.min()))
            highest = int(torch.maximum(src.max(), dst.max()))
            if lowest < 0 or highest >= num_atoms:
                raise ValueError(
                    "neighbour index out of range [0, "
                    + str(num_atoms)
                    + "): "
                    + str(lowest)
                    + ".."
                    + str(highest)
                )


class ExportedALIGNNSmooth(ExportedALIGNN, ALIGNNAtomWisePureSmooth):
    """``alignn_atomwise_pure_smooth`` with the same entry points as :class:`ExportedALIGNN`.

    Only the base class changes: the smooth model's overrides (bases, readout, energies) are
    what ``forward_tensors_z`` calls. Triplets follow the neighbour contract's
    ``three_body_cutoff``, i.e. the graph settings training used (upstream's smooth export
    builds them from every edge instead, so its energies differ from training's).
    """
