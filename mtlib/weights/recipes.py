"""The published distillation recipes (model.recipe) and where their LoRA files come from.

MultiTalk's README runs two LoRAs trained for Wan2.1-14B (facts §12, README "Run with
FusioniX and CausVid"): FusionX in 8 steps and lightx2v in 4, both with text scale 1.0 (so
the drop_text pass is skipped: 2 DiT passes per step), audio scale 2.0, shift 2 and
`--lora_scale 1.0`. The presets `multitalk-480-lightx2v` / `multitalk-480-fusionx` carry
those numbers; the LoRA file is their one required input. `check_recipe(cfg)` refuses a run
whose recipe has no LoRA before anything loads, naming where the file comes from.

With `model.weights.quant: int8` the reference applies no LoRA (facts §11.4): the FusionX
recipe then reads MeiGen's FusionX-merged int8 checkpoint instead, and lightx2v is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlib.config import ConfigError


@dataclass(frozen=True)
class LoraSource:
    name: str
    repo_id: str | None  # Hugging Face repo the README links (None: unknown)
    filename: str | None  # path inside the repo
    steps: int
    scale: float = 1.0  # the README's --lora_scale

    @property
    def url(self) -> str | None:
        if self.repo_id is None or self.filename is None:
            return None
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.filename}"


# The README's two links (MultiTalk README, "Run with FusioniX and CausVid").
LORA_SOURCES: dict[str, LoraSource] = {
    "lightx2v": LoraSource(
        "lightx2v", "Kijai/WanVideo_comfy",
        "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors", steps=4,
    ),
    "fusionx": LoraSource(
        "fusionx", "vrgamedevgirl84/Wan14BT2VFusioniX",
        "FusionX_LoRa/Wan2.1_I2V_14B_FusionX_LoRA.safetensors", steps=8,
    ),
}  # fmt: skip

# MeiGen's FusionX-merged int8 checkpoint (under quant_dir/quant_models/, facts §1.1).
FUSIONX_QUANT_FILE = "quant_model_int8_FusionX.safetensors"
FUSIONX_QUANT_MAP = "quantization_map_int8_FusionX.json"


def lora_source(recipe: str) -> LoraSource | None:
    return LORA_SOURCES.get(recipe)


def how_to_get(recipe: str) -> str:
    """One sentence: where the recipe's LoRA comes from, or that mtlib cannot know."""
    src = lora_source(recipe)
    if src is None or src.url is None:
        return (f"mtlib does not know where the {recipe} LoRA is published; download it "
                "yourself and give its path")  # fmt: skip
    return (
        f"`mtlib setup --lora {recipe} --root weights` downloads it ({src.repo_id}: {src.filename})"
    )


def check_recipe(cfg) -> None:
    """Refuse a recipe run without its LoRA (or with a LoRA the int8 path cannot take)."""
    m = cfg.model
    recipe = m.recipe
    if recipe == "none":
        return
    src = LORA_SOURCES[recipe]
    quant = m.weights.quant != "none"
    if quant and m.loras:
        raise ConfigError(
            f"model.loras: the int8 checkpoints take no separate LoRA (the reference merges none in "
            f"quant mode); got {len(m.loras)}. Fix: model.loras=[] "
            + ("(the fusionx recipe then reads the FusionX-merged int8 checkpoint)" if recipe == "fusionx"
               else "or model.weights.quant=none")
        )  # fmt: skip
    if quant and recipe == "fusionx":
        return  # quant_model_int8_FusionX.safetensors has the LoRA merged in
    if quant:
        raise ConfigError(
            f"model.recipe {recipe!r} with model.weights.quant=int8: MeiGen publishes no int8 checkpoint "
            f"with the {recipe} LoRA merged, and the reference applies no LoRA in quant mode. Fix: "
            "model.weights.quant=none, or model.recipe=fusionx with its int8 checkpoint."
        )
    if not m.loras and not m.weights.random:
        raise ConfigError(
            f"model.recipe {recipe!r} ({src.steps} steps, text scale 1) needs the {recipe} LoRA, and "
            f"model.loras is empty. Fix: mtlib generate --lora PATH:{src.scale} (or -p "
            f"'model.loras=[{{path: PATH, scale: {src.scale}}}]'); {how_to_get(recipe)}."
        )
