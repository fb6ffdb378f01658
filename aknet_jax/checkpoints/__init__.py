"""Orbax checkpoints: the store of a stage (`store`), what makes a step trustworthy (`integrity`),
steps read as variables alone
(`variables`), the architecture a step records (`architecture`), the one tree-shape check (`trees`), checkpoints
as model inputs (`restore`) and PyTorch files as a source of variables (`pytorch`)."""

from aknet_jax.checkpoints.integrity import (CorruptCheckpointError, SaveError, latest_good,
                                             partial_steps, tree_checksum)
from aknet_jax.checkpoints.integrity import COMMIT_FILE, CORRUPT_SUFFIX
from aknet_jax.checkpoints.store import StageCheckpoints
from aknet_jax.checkpoints.variables import (ITEMS, find_checkpoint, load_variables, read_meta,
                                             read_variables, write_variables)

__all__ = ["COMMIT_FILE", "CORRUPT_SUFFIX", "CorruptCheckpointError", "ITEMS", "SaveError", "StageCheckpoints", "find_checkpoint",
           "latest_good", "load_variables", "partial_steps", "read_meta", "read_variables",
           "tree_checksum", "write_variables"]
