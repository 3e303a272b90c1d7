"""Which served base model an upload is for: a pure choice over the served models and the files.

1. ``base_model`` named in the upload: that one, or 400 if no such model is served;
2. else the model the adapter's ``base_model_name_or_path`` names (see :func:`declared_base_model`);
3. else the only served model;
4. else 400 asking for ``base_model``.

The chosen model must have been described by a worker (its architecture is known), or nothing
can be checked against it. Every refusal is an :class:`InvalidRequest` with ``param="base_model"``.
"""

from __future__ import annotations

from pathlib import Path

from lorafleet.adapters.validation import BaseModelSpec, declared_base_model, shown
from lorafleet.core.errors import InvalidRequest


def select_base_model(bases: list[BaseModelSpec], requested: str | None, files: dict[str, Path]) -> BaseModelSpec:
    by_name = {base.name: base for base in bases}
    if requested:
        base = by_name.get(requested)
        if base is None:
            raise InvalidRequest(f"no base model named {shown(requested)}", param="base_model")
    else:
        declared = declared_base_model(files, list(by_name))
        if declared is not None:
            base = by_name[declared]
        elif len(bases) == 1:
            base = bases[0]
        elif not bases:
            raise InvalidRequest("no base model is served yet", param="base_model")
        else:
            raise InvalidRequest("several base models are served and the adapter's base_model_name_or_path names "
                                 "none of them; name one in base_model", param="base_model")
    if base.architecture is None:
        raise InvalidRequest(f"base model {shown(base.name)} has no worker yet to describe it", param="base_model")
    return base
