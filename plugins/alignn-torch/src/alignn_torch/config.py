"""Configs of the ``alignn_atomwise_pure`` and ``alignn_atomwise_pure_smooth`` models:
upstream's fields, types and defaults.

Fields that upstream accepts but ignores are accepted here too and produce a load-time warning
instead of silence (``include_pos_deriv``, ``extra_features``, ``zero_inflated``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from alignn_core.config.model import LossWeights, ModelConfig

if TYPE_CHECKING:
    from alignn_core.config.training import TrainingConfigBase


class AtomwiseFields(ModelConfig):
    """Fields shared by the DGL ``alignn_atomwise`` and the pure ``alignn_atomwise_pure``."""

    alignn_layers: int = Field(default=2, ge=0)
    gcn_layers: int = Field(default=2, ge=0)
    atom_input_features: int = Field(default=1, ge=1)
    edge_input_features: int = Field(default=80, ge=2)
    triplet_input_features: int = Field(default=40, ge=2)
    embedding_features: int = Field(default=64, ge=1)
    hidden_features: int = Field(default=64, ge=1)
    output_features: int = Field(default=1, ge=1)
    grad_multiplier: int = -1
    calculate_gradient: bool = True
    atomwise_output_features: int = Field(default=0, ge=0)
    graphwise_weight: float = 1.0
    gradwise_weight: float = 1.0
    stresswise_weight: float = 0.0
    atomwise_weight: float = 0.0
    link: Literal["identity", "log", "logit"] = "identity"
    zero_inflated: bool = False
    classification: bool = False
    force_mult_natoms: bool = False
    energy_mult_natoms: bool = True
    include_pos_deriv: bool = False
    use_cutoff_function: bool = False
    inner_cutoff: float = Field(default=3.0, gt=0)
    stress_multiplier: float = 1.0
    add_reverse_forces: bool = True
    lg_on_fly: bool = True
    batch_stress: bool = True
    multiply_cutoff: bool = False
    use_penalty: bool = True
    extra_features: int = Field(default=0, ge=0)
    exponent: int = Field(default=5, ge=1)
    penalty_factor: float = 0.1
    penalty_threshold: float = 1.0
    additional_output_features: int = Field(default=0, ge=0)
    additional_output_weight: float = 0.0

    @property
    def computes_gradient(self) -> bool:
        """Upstream turns force (and stress) computation off when ``gradwise_weight`` is 0."""
        return self.calculate_gradient and self.gradwise_weight != 0

    def loss_weights(self) -> LossWeights:
        grad = self.computes_gradient
        return LossWeights(
            graph=self.graphwise_weight,
            forces=self.gradwise_weight if grad else 0.0,
            stress=self.stresswise_weight if grad else 0.0,
            atomwise=self.atomwise_weight if self.atomwise_output_features > 0 else 0.0,
            additional=self.additional_output_weight if self.additional_output_features else 0.0,
        )

    def check(self, training: TrainingConfigBase) -> list[str]:
        warnings = super().check(training)
        if self.calculate_gradient and self.gradwise_weight == 0:
            warnings.append(
                "model.gradwise_weight is 0, so calculate_gradient is turned off: no forces or "
                "stress are computed or trained (set gradwise_weight > 0 to train forces)"
            )
        if not self.batch_stress and training.batch_size > 1:
            warnings.append(
                "model.batch_stress=false is ignored: stress is always computed per structure "
                "(upstream's DGL model would return one stress for the whole batch)"
            )
        if self.force_mult_natoms and self.computes_gradient:
            warnings.append(
                "model.force_mult_natoms=true trains forces as N x (-dE/dx), so energy and forces "
                "disagree by a factor N and MD does not conserve energy; measured on mlearn Cu "
                "(reduced config, 3 epochs) it left energies at 1519 meV/atom vs 16 with false: "
                "set it to false unless you reproduce upstream's recipe"
            )
        if self.include_pos_deriv:
            warnings.append(
                f"model.include_pos_deriv=true is ignored by {self.name}: forces are exact "
                "derivatives through the edge vectors already"
            )
        if self.extra_features:
            warnings.append(f"model.extra_features={self.extra_features} is ignored by {self.name}")
        if self.atomwise_weight and not self.atomwise_output_features:
            warnings.append(
                "model.atomwise_weight is set but atomwise_output_features is 0: no per-atom "
                "head exists, so the atomwise loss is not trained"
            )
        if self.stresswise_weight and not self.computes_gradient:
            warnings.append(
                "model.stresswise_weight is set but forces are off: stress is not trained"
            )
        if self.classification and training.classification_threshold is None:
            raise ValueError(
                "model.classification is true but classification_threshold is not set; "
                "set classification_threshold to binarise the targets"
            )
        return warnings


ELEMENTAL_UPSTREAM_WARNING = (
    "one-element dataset with forces and model.node_update 'upstream': that update sees "
    "geometry only through node_update_eps (1e-6); measured on mlearn Cu, evaluating a trained "
    "model at 1e-5 instead moved its test force MAE from 0.042 to 0.352 eV/A; use node_update "
    "'gated_sum' (docs/elemental.md)"
)


class ALIGNNAtomWisePureConfig(AtomwiseFields):
    """``alignn_atomwise_pure``: the DGL-free ALIGNN force-field/property model."""

    name: Literal["alignn_atomwise_pure"]
    penalty_factor: float = 0.5
    three_body_cutoff: float = Field(default=3.5, gt=0)
    use_zbl: bool | None = None
    zbl_cutoff: float = Field(default=0.9, gt=0)
    conv_type: Literal["alignn", "n_alignn", "t_alignn"] = "alignn"
    num_heads: int = Field(default=1, ge=1)
    node_update: Literal["upstream", "gated_sum"] = Field(
        default="upstream",
        description=(
            "aggregation of the crystal-graph convs: 'upstream' is the gated mean (upstream's "
            "numbers and checkpoints; blind to geometry for one-element systems except through "
            "node_update_eps), 'gated_sum' a gated sum divided by node_update_norm"
        ),
    )
    node_update_norm: float = Field(
        default=12.0,
        gt=0,
        description="divisor of the gated sum (a typical neighbour count); gated_sum only",
    )
    node_update_eps: float = Field(
        default=1e-6,
        ge=0,
        description=(
            "the constant in the gated mean's denominator (upstream: 1e-6). Exposed to "
            "measure its effect; trained elemental force fields depend on it"
        ),
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ALIGNNAtomWisePureConfig:
        if self.conv_type != "alignn" and self.hidden_features % self.num_heads:
            raise ValueError(
                f"hidden_features ({self.hidden_features}) must be divisible by num_heads "
                f"({self.num_heads}) for conv_type {self.conv_type!r}"
            )
        if self.node_update != "upstream" and self.conv_type == "t_alignn":
            raise ValueError(
                "node_update 'gated_sum' needs conv_type 'alignn' or 'n_alignn' "
                "(t_alignn normalises by softmax)"
            )
        return self

    def dataset_warnings(self, elements: set[int]) -> list[str]:
        if len(elements) != 1 or not self.computes_gradient or self.node_update != "upstream":
            return []
        return [ELEMENTAL_UPSTREAM_WARNING]

    @property
    def zbl_enabled(self) -> bool:
        """``use_zbl`` None means: on whenever forces are computed (upstream's rule)."""
        return (
            self.computes_gradient
            if self.use_zbl is None
            else (self.use_zbl and self.computes_gradient)
        )

    def check(self, training: TrainingConfigBase) -> list[str]:
        warnings = super().check(training)
        graph_tbc = training.graph_settings.triplet_cutoff
        if graph_tbc is None:  # k-nearest/radius graphs keep every triplet, as upstream does
            return warnings
        if "three_body_cutoff" in self.model_fields_set and self.three_body_cutoff != graph_tbc:
            raise ValueError(
                f"model.three_body_cutoff ({self.three_body_cutoff}) differs from the graph's "
                f"three_body_cutoff ({graph_tbc}); exported models would use different triplets "
                "than training did: make them equal"
            )
        self.three_body_cutoff = graph_tbc
        return warnings


# ---------------------------------------------------------------------------- smooth model
SMOOTH_REMOVED_FIELDS = {
    "use_cutoff_function": "its radial basis always has the envelope at radial_cutoff",
    "multiply_cutoff": "its radial basis always has the envelope at radial_cutoff",
    "three_body_cutoff": "triplets follow the top-level three_body_cutoff, in training and "
    "export alike",
    "use_zbl": "it has no ZBL term",
    "zbl_cutoff": "it has no ZBL term",
}
"""Fields of ``alignn_atomwise_pure`` that upstream's smooth config does not have, and why."""


class ALIGNNAtomWisePureSmoothConfig(ALIGNNAtomWisePureConfig):
    """``alignn_atomwise_pure_smooth``: the pure model with learnable Bessel radial and Fourier
    angular bases, a polynomial envelope, an AtomRef composition baseline and a site-energy
    readout (docs/training.md, "Model alignn_atomwise_pure_smooth").

    Every field of ``alignn_atomwise_pure`` except :data:`SMOOTH_REMOVED_FIELDS` (a config that
    sets one of them is rejected, as upstream's would be); ``node_update`` applies as in the
    pure model.
    """

    name: Literal["alignn_atomwise_pure_smooth"]  # type: ignore[assignment]
    energy_mult_natoms: bool = Field(
        default=False,
        description=(
            "false: out is the total energy (targets are totals); true: out is the energy per "
            "atom (targets per atom) and the total is out x N"
        ),
    )
    radial_cutoff: float = Field(
        default=8.0, gt=0, description="r_c of the radial basis and its envelope (Å)"
    )
    smooth_cutoff_coeff: float = Field(
        default=5.0,
        gt=0,
        description="order p of the envelope 1 - (p+1)(p+2)/2 t^p + p(p+2) t^(p+1) - "
        "p(p+1)/2 t^(p+2), t = d/radial_cutoff, zero for d >= radial_cutoff",
    )
    radial_basis: Literal["bessel", "gaussian"] = Field(
        default="bessel",
        description="'bessel': sqrt(2/r_c) sin(w_n d/r_c)/d, n = 1..edge_input_features; "
        "'gaussian': upstream's RBF on 0..radial_cutoff",
    )
    angular_basis: Literal["fourier", "cosine"] = Field(
        default="fourier",
        description="'fourier': [1/sqrt2, sin(k_j theta), cos(k_j theta)]/sqrt(pi), "
        "j = 1..max(1, (triplet_input_features-1)//2); 'cosine': upstream's RBF on cos theta",
    )
    radial_learnable: bool = Field(
        default=True, description="train the Bessel frequencies w_n (init n pi)"
    )
    angular_learnable: bool = Field(
        default=True, description="train the Fourier multipliers k_j (init 1..order)"
    )
    use_atomref: bool = Field(
        default=True,
        description="add a learned per-atom baseline Linear(atom features -> 1), zero at init",
    )
    mlp_first: bool = Field(
        default=True,
        description="true: site energies fc(x_i) summed per structure; false: fc of the mean "
        "atom features (the pure model's readout)",
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, reason in SMOOTH_REMOVED_FIELDS.items():
                if key in data:
                    raise ValueError(
                        f"{key} is not a field of alignn_atomwise_pure_smooth ({reason}); remove it"
                    )
        return data

    @property
    def zbl_enabled(self) -> bool:
        return False

    @property
    def radial_features(self) -> int:
        """Width of the radial basis: one function per ``edge_input_features``."""
        return self.edge_input_features

    @property
    def angular_features(self) -> int:
        """Width of the angular basis: 2 * order + 1 (Fourier) or the RBF's bins (cosine)."""
        if self.angular_basis == "cosine":
            return self.triplet_input_features
        return 2 * max(1, (self.triplet_input_features - 1) // 2) + 1

    def check(self, training: TrainingConfigBase) -> list[str]:
        # AtomwiseFields' checks, not ALIGNNAtomWisePureConfig's: that one syncs
        # model.three_body_cutoff, a field this model does not have (the exporter reads the
        # triplet cutoff from the graph settings, as the graph builder does).
        warnings = AtomwiseFields.check(self, training)
        # Resolved configs (a run's config.json) list every field, so only values that differ
        # from the defaults show that a user expected an effect.
        fields = type(self).model_fields
        ignored = [
            key for key in ("exponent", "inner_cutoff") if getattr(self, key) != fields[key].default
        ]
        if ignored:
            warnings.append(
                f"model.{' and model.'.join(ignored)} {'is' if len(ignored) == 1 else 'are'} "
                "ignored by alignn_atomwise_pure_smooth: its envelope is set by radial_cutoff "
                "and smooth_cutoff_coeff"
            )
        return warnings


def _drop_inherited_fields(cls: type[ModelConfig], names: list[str]) -> None:
    """Remove inherited fields from a pydantic model class and rebuild its validator.

    pydantic has no declaration that un-inherits a field; without this the smooth config would
    accept, dump and document fields that upstream's does not have. Checked right away, so a
    pydantic release that changes this fails at import instead of silently accepting them.
    """
    for name in names:
        del cls.model_fields[name]
    cls.model_rebuild(force=True)
    left = set(names) & (set(cls.model_fields) | set(cls.model_json_schema()["properties"]))
    if left:
        raise RuntimeError(f"{cls.__name__} still has fields {sorted(left)} (pydantic changed?)")


_drop_inherited_fields(ALIGNNAtomWisePureSmoothConfig, list(SMOOTH_REMOVED_FIELDS))
