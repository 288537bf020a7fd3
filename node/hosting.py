"""Which experts this node serves, loaded from the zoo as its config says."""

from __future__ import annotations

import experts
from node.config import ExpertsConfig
from protocols.infer_server import Expert

FFN_DIM = 64
FFN_SEED = 0  # every node builds the same ffn64, so its expert id is the same everywhere


def load_hosted(config: ExpertsConfig) -> list[Expert]:
    hosted: list[Expert] = []
    for name in config.host:
        if name == "ffn64":
            hosted.append(experts.build_ffn(FFN_DIM, seed=FFN_SEED))
        else:
            hosted.append(
                experts.load_generator(name, "int8" if config.precision == "int8" else "f32")
            )
    return hosted


def ffn64_id() -> str:
    return experts.build_ffn(FFN_DIM, seed=FFN_SEED).expert_id
