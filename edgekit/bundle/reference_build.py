"""Build-time side of the reference data: run the PyTorch source on bench's eval windows and write
`reference.npz` (format: edgekit.bundle.reference). The same tokens as the host fidelity: bench's `eval_windows`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit import progress
from edgekit.bundle import reference as refmod

if TYPE_CHECKING:
    from edgekit.bench.sourceref import SourceOutputs
    from edgekit.source import SourceModel

log = logging.getLogger(__name__)


def make_reference(source: SourceModel, eval_data: Path | None, eval_tokens: int, *, top_k: int = refmod.TOP_K,
                   outputs: SourceOutputs | None = None) -> refmod.Reference:
    """The source's next-token reference on the eval windows (text-generation sources only), from the cached
    source outputs the bench read (edgekit.bench.sourceref): the source runs once per build, not twice."""
    from edgekit.bench.sourceref import source_outputs

    if outputs is None:
        outputs = source_outputs(source, eval_data, eval_tokens, 0)
    wins = [win for _, win in outputs.windows()]
    builder = refmod.ReferenceBuilder(top_k)
    with progress.stage("reference data", total=len(wins)) as st:
        for win, logits in zip(wins, outputs.window_logits(), strict=True):
            builder.add(win, logits)
            st.advance()
    ids = np.asarray([t for w in wins for t in w], dtype=np.int32)
    meta = {"source_sha256": source.fingerprint.get("sha256"), "eval": {
        "data": str(eval_data) if eval_data else "builtin:eval", "tokens": eval_tokens,
        "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}}
    return builder.build(meta)


def write_reference(source: SourceModel, eval_data: Path | None, eval_tokens: int, dest: Path, *,
                    outputs: SourceOutputs | None = None) -> Path | None:
    """`dest` for a text-generation source; None (nothing to write) for encoders."""
    if source.task != "text-generation":
        return None
    ref = make_reference(source, eval_data, eval_tokens, outputs=outputs)
    refmod.save(ref, dest)
    log.info("reference data: %d positions, top-%d, tail mass %.2g, %.2f MB", ref.positions, ref.meta["top_k"],
             ref.meta["tail_mass_mean"], dest.stat().st_size / 1e6)
    return dest
