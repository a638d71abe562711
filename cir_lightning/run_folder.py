"""A run's log folder: its own ``version_N`` (``claim_versions``), also for runs started at the same moment in the
same folder, and the run's whole config kept in it (``KeepConfigCallback``).

Lightning's loggers (TensorBoard, CSV) take the next ``version_N`` by listing the folder, and make it only when they
first write: two runs started together took the same number, and one folder held both runs' metrics,
hyperparameters and checkpoints (``last.ckpt`` written by each in turn). ``claim_versions`` makes the folder as the
trainer is made, by ``mkdir``, which fails if another run made it first; the next number is then taken. A run that
fails or is stopped before writing anything there removes it again (``VersionClaims``: the run's own claims).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cir_lightning.files import write_error
from cir_lightning.free_names import write_free

__all__ = ["KeepConfigCallback", "VersionClaims", "claim_versions"]

def claim_versions(trainer: Any) -> list[Path]:
    """Make the ``version_N`` folder of each of ``trainer``'s loggers that numbers its runs itself (no ``version``
    given), under a number no other run holds; returns the folders. Other processes of the run take the first
    one's (``trainer.log_dir`` and the checkpoint folder are broadcast from it).

    Example:
        >>> import tempfile
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> root = tempfile.mkdtemp()
        >>> trainer = pl.Trainer(logger=CSVLogger(root), enable_progress_bar=False, enable_model_summary=False)
        >>> [p.name for p in claim_versions(trainer)], trainer.log_dir == f"{root}/lightning_logs/version_0"
        (['version_0'], True)
    """
    claimed: list[Path] = []
    if rank_zero_only.rank != 0:
        return claimed
    for logger in trainer.loggers:
        numbers = getattr(logger, "_get_next_version", None)
        if getattr(logger, "_version", "given") is not None or numbers is None or "://" in str(logger.root_dir):
            continue  # a version given, a logger that numbers none, a remote folder: as Lightning does
        root = Path(os.path.expanduser(os.path.expandvars(logger.root_dir)))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(root, err, "create the folder") from None
        version = numbers()
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:  # another run made it since the folder was listed
                version += 1
            except OSError as err:
                raise write_error(root / f"version_{version}", err, "create the folder") from None
        logger._version = version
        claimed.append(root / f"version_{version}")
    return claimed


class VersionClaims:
    """The ``version_N`` folders one run claimed (``claim``), owned by that run: when it fails or is stopped inside
    ``released_on_failure``, those still empty are removed. Another run in the same process (a test calling
    ``cli.main`` again, a second ``CIRLightningCLI`` in a thread) has its own, and never sees these.

    Example:
        >>> import tempfile, pytest
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> root = tempfile.mkdtemp()
        >>> run, other = VersionClaims(), VersionClaims()
        >>> with pytest.raises(ValueError), run.released_on_failure():
        ...     [mine] = run.claim(pl.Trainer(logger=CSVLogger(root), enable_progress_bar=False))
        ...     [theirs] = other.claim(pl.Trainer(logger=CSVLogger(root), enable_progress_bar=False))
        ...     raise ValueError("a refused option")
        >>> mine.exists(), theirs.exists()
        (False, True)
    """

    def __init__(self) -> None:
        self.folders: list[Path] = []

    def claim(self, trainer: Any) -> list[Path]:
        """``claim_versions(trainer)``, the folders kept as this run's."""
        claimed = claim_versions(trainer)
        self.folders += claimed
        return claimed

    @contextlib.contextmanager
    def released_on_failure(self) -> Iterator[None]:
        """Run the command; if it fails or is stopped (any exception, an exit with a non-zero status), each folder
        this run claimed that is still empty is removed (a refused config left one behind per attempt)."""
        try:
            yield
        except BaseException as err:
            if not (isinstance(err, SystemExit) and err.code in (0, None)):
                for folder in self.folders:
                    with contextlib.suppress(OSError):  # only an empty folder: whatever the run wrote stays
                        folder.rmdir()
            raise


class KeepConfigCallback(SaveConfigCallback):
    """Saves the run's config next to its logs under a free name: ``config.yaml`` if it is not taken,
    else ``config-<stage>.yaml``, ``config-<stage>-1.yaml``, ... (a ``validate`` run in the folder of an
    earlier ``fit`` neither fails nor overwrites the earlier file), and logs the whole config as the run's
    hyperparameters (TensorBoard's HParams, the CSV logger's ``hparams.yaml``) in place of Lightning's own,
    which hold only the module's and the data's arguments (no optimizer, backbone or LoRA)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir or trainer.default_root_dir
        name, stage = self.config_filename, getattr(stage, "value", stage)
        if trainer.is_global_zero:  # written atomically, never over an existing file (another run's, even now)
            text, first = self.parser.dump(self.config, skip_none=False), Path(log_dir) / name
            name = write_free(first, text, then=first.with_name(f"{first.stem}-{stage}{first.suffix}")).name
        self.config_filename = trainer.strategy.broadcast(name)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            import yaml

            for logger in trainer.loggers:
                logger.log_hyperparams(yaml.safe_load(text))
                logger.save()
        trainer.enable_autolog_hparams = False  # logged above, all of it
        self.already_saved = trainer.strategy.broadcast(True)
