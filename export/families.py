"""Registry of model families: config class, reference model, HF name map, chat template, presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mcpm.errors import UnsupportedModelError
from mcpm.export.models.minicpm import presets as minicpm_presets
from mcpm.export.models.minicpm.config import MiniCPMConfig
from mcpm.export.models.minicpm.loader import HF_NAMES as MINICPM_NAMES
from mcpm.export.models.minicpm.model import MiniCPM
from mcpm.export.models.minicpm3 import presets as minicpm3_presets
from mcpm.export.models.minicpm3.config import MiniCPM3Config
from mcpm.export.models.minicpm3.loader import HF_NAMES as MINICPM3_NAMES
from mcpm.export.models.minicpm3.model import MiniCPM3
from mcpm.export.models.minicpmv import presets as minicpmv_presets
from mcpm.export.models.minicpmv.config import MiniCPMVConfig
from mcpm.export.models.minicpmv.loader import HF_NAMES as MINICPMV_NAMES
from mcpm.export.models.minicpmv.model import MiniCPMV
from mcpm.export.name_map import NameMap


@dataclass(frozen=True)
class Family:
    model_type: str
    config_cls: type
    model_cls: type[nn.Module]
    names: NameMap
    chat_template: str
    presets: dict[str, dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "minicpm": Family("minicpm", MiniCPMConfig, MiniCPM, MINICPM_NAMES, "minicpm", minicpm_presets.PRESETS),
    "minicpm3": Family("minicpm3", MiniCPM3Config, MiniCPM3, MINICPM3_NAMES, "chatml", minicpm3_presets.PRESETS),
    # MiniCPM-V 2.0 (later MiniCPM-V versions share this model_type and are refused by MiniCPMVConfig)
    "minicpmv": Family("minicpmv", MiniCPMVConfig, MiniCPMV, MINICPMV_NAMES, "minicpm", minicpmv_presets.PRESETS),
}

# model_type values of MiniCPM relatives that mcpm does not (yet) support, with what to say
_LATER = {
    "minicpmo": "MiniCPM-o is not supported",
}


def family_for(model_type: object) -> Family:
    if isinstance(model_type, str) and model_type in FAMILIES:
        return FAMILIES[model_type]
    hint = _LATER.get(str(model_type), f"supported model_type values: {', '.join(sorted(FAMILIES))}")
    raise UnsupportedModelError(f"config.json: model_type {model_type!r} is not supported", hint)


def all_presets() -> dict[str, tuple[Family, dict[str, Any]]]:
    return {name: (fam, cfg) for fam in FAMILIES.values() for name, cfg in fam.presets.items()}
