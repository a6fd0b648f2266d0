"""``TrainingConfig``: the top level of a run's JSON file.

Every upstream ALIGNN field is here with upstream's type and default, so upstream configs load
unchanged. Differences, all deliberate and documented in ``docs/config.md``:

- no ``jv_``-prefixed environment variables: a run is fully described by its JSON file;
- ``model`` is required (upstream silently defaults to the DGL model);
- cross-field contradictions fail at load time instead of at the first forward pass;
- the data-key options upstream only takes on its command line (``target_key`` ...) can also be
  set here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignn_core.config.graph_settings import AtomFeatures, GraphSettings, NeighborStrategy

DATASETS = (
    "dft_3d", "jdft_3d-8-18-2021", "dft_2d", "megnet", "megnet2", "mp_3d_2020", "qm9",
    "qm9_dgl", "qm9_std_jctc", "user_data", "oqmd_3d_no_cfid", "edos_up", "edos_pdos", "qmof",
    "qe_tb", "hmof", "hpov", "pdbbind", "pdbbind_core", "tinnet_OH", "tinnet_O", "tinnet_N",
)  # fmt: skip


class TrainingConfigBase(BaseModel):
    """All top-level fields; :func:`alignn_core.config.loader.training_config_class` adds
    ``model`` as a union of the registered model configs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: str = "NA"
    dataset: Literal[DATASETS] = "dft_3d"  # type: ignore[valid-type]
    target: str = "exfoliation_energy"
    atom_features: AtomFeatures = "cgcnn"
    neighbor_strategy: NeighborStrategy = "k-nearest"
    id_tag: Literal["jid", "id", "_oqmd_entry_id"] = "jid"
    dtype: Literal["float16", "float32", "float64", "bfloat", "bfloat16"] = "float32"
    random_seed: int | None = 123
    classification_threshold: float | None = None
    n_val: int | None = Field(default=None, ge=0)
    n_test: int | None = Field(default=None, ge=0)
    n_train: int | None = Field(default=None, ge=0)
    train_ratio: float | None = Field(default=0.8, ge=0, le=1)
    val_ratio: float | None = Field(default=0.1, ge=0, le=1)
    test_ratio: float | None = Field(default=0.1, ge=0, le=1)
    target_multiplication_factor: float | None = None
    epochs: int = Field(default=300, ge=0)
    batch_size: int = Field(default=64, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    learning_rate: float = Field(default=1e-2, gt=0)
    filename: str = "sample"
    warmup_steps: int = Field(default=2000, ge=0)
    criterion: Literal["mse", "l1", "poisson", "zig"] = "mse"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "none"] = "onecycle"
    pin_memory: bool = False
    save_dataloader: bool = False
    write_checkpoint: bool = True
    write_predictions: bool = True
    store_outputs: bool = True
    progress: bool = True
    log_tensorboard: bool = False
    standard_scalar_and_pca: bool = False
    use_canonize: bool = True
    compute_line_graph: bool = True
    num_workers: int = Field(default=4, ge=0)
    cutoff: float = Field(default=5.0, gt=0)
    cutoff_extra: float = Field(default=3.0, ge=0)
    three_body_cutoff: float | None = Field(default=3.5, gt=0)
    max_neighbors: int | None = Field(default=12, ge=1)
    keep_data_order: bool = True
    normalize_graph_level_loss: bool = False
    distributed: bool = False
    data_parallel: bool = False
    n_early_stopping: int | None = Field(default=None, ge=1)
    output_dir: str = "."
    use_lmdb: bool = True
    read_existing: bool = False
    gpu_memory_fraction: float | None = Field(default=None, gt=0, le=1)
    use_amp: bool = False
    ddp_find_unused_parameters: bool = False
    resume_checkpoint: bool = False
    lr_total_epochs: int | None = Field(default=None, ge=1)
    deterministic: bool = False

    # Ours: upstream takes these only as train_alignn.py options.
    target_key: str = "total_energy"
    id_key: str = "jid"
    force_key: str = "forces"
    stresswise_key: str = "stresses"
    atomwise_key: str = "forces"
    additional_output_key: str = "additional_output"
    file_format: Literal["poscar", "cif", "xyz", "pdb", "auto"] = "auto"
    cache_dir: str | None = None  # LMDB graph caches; None: OUTPUT_DIR/cache
    # Replay training steps as CUDA graphs (GPU; docs/training.md)
    cuda_graphs: bool = False

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if value is not None else "NA"

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainingConfigBase:
        if self.three_body_cutoff is not None and self.three_body_cutoff > self.cutoff:
            raise ValueError(
                f"three_body_cutoff ({self.three_body_cutoff}) must be <= cutoff ({self.cutoff})"
            )
        for other in ("distributed", "use_amp"):
            if self.cuda_graphs and getattr(self, other):
                raise ValueError(
                    f"cuda_graphs cannot be combined with {other} yet; set one of them false"
                )
        ratios = [r for r in (self.train_ratio, self.val_ratio, self.test_ratio) if r is not None]
        if sum(ratios) > 1.0 + 1e-9:
            raise ValueError(
                f"train_ratio + val_ratio + test_ratio = {sum(ratios):g} exceeds 1; "
                "lower one of them"
            )
        return self

    @property
    def graph_settings(self) -> GraphSettings:
        return GraphSettings.from_config(self)
